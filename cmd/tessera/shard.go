package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/tessera-kv/tessera/proto/adminpb"
)

// runShard runs the shard admin verbs.
func runShard(args []string) error {
	if len(args) == 0 || args[0] != "list" {
		return errors.New("usage: tessera shard list [--endpoints URL]")
	}
	fs := flag.NewFlagSet("shard list", flag.ExitOnError)
	gw := registerGatewayClient(fs, "the admin API is root's")
	fs.Parse(args[1:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, ctx, err := gw.connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := adminpb.NewAdminClient(conn).ListShards(ctx, &adminpb.ListShardsRequest{})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTART\tEND\tREPLICAS\tLEADER\tREVISION\tCLOSED\tCOMPACTED")
	for _, s := range resp.Shards {
		d := s.Shard
		end := strconv.Quote(string(d.EndKey))
		if len(d.EndKey) == 0 {
			end = "(end)"
		}
		fmt.Fprintf(w, "%d\t%q\t%s\t%v\t%d\t%d\t%d\t%d\n", d.Id, d.StartKey, end, d.Replicas, s.LeaderStoreId, s.Revision, s.ClosedRevision, s.CompactRevision)
	}
	return w.Flush()
}
