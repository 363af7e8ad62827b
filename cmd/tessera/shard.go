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
	const usage = "usage: tessera shard list [--endpoints URL] | tessera shard split [--endpoints URL] KEY"
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "list":
	case "split":
		return runShardSplit(args[1:])
	default:
		return errors.New(usage)
	}
	var resp *adminpb.ListShardsResponse
	err := adminCall(flag.NewFlagSet("shard list", flag.ExitOnError), args[1:], 30*time.Second, func(ctx context.Context, c adminpb.AdminClient) (err error) {
		resp, err = c.ListShards(ctx, &adminpb.ListShardsRequest{})
		return err
	})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTART\tEND\tREPLICAS\tLEADER\tSIZE\tREVISION\tCLOSED\tCOMPACTED")
	for _, s := range resp.Shards {
		d := s.Shard
		fmt.Fprintf(w, "%d\t%q\t%s\t%v\t%d\t~%s\t%d\t%d\t%d\n", d.Id, d.StartKey, endName(d.EndKey), d.Replicas, s.LeaderStoreId,
			bytesString(s.ApproximateBytes), s.Revision, s.ClosedRevision, s.CompactRevision)
	}
	return w.Flush()
}

// runShardSplit splits the shard holding KEY at it, online.
func runShardSplit(args []string) error {
	fs := flag.NewFlagSet("shard split", flag.ExitOnError)
	var resp *adminpb.SplitShardResponse
	began := time.Now()
	err := adminCall(fs, args, 60*time.Second, func(ctx context.Context, c adminpb.AdminClient) (err error) {
		if fs.NArg() != 1 || fs.Arg(0) == "" {
			return errors.New("usage: tessera shard split [--endpoints URL] KEY")
		}
		fmt.Fprintf(os.Stderr, "splitting the shard of %q ...\n", fs.Arg(0))
		resp, err = c.SplitShard(ctx, &adminpb.SplitShardRequest{SplitKey: []byte(fs.Arg(0))})
		return err
	})
	if err != nil {
		return err
	}
	l, r := resp.Left, resp.Right
	fmt.Printf("split shard %d at %q (revision %d, %s): shard %d [%q, %q), shard %d [%q, %s)\n", l.Id, r.StartKey, r.SplitRevision,
		time.Since(began).Round(time.Millisecond), l.Id, l.StartKey, l.EndKey, r.Id, r.StartKey, endName(r.EndKey))
	return nil
}

func endName(end []byte) string {
	if len(end) == 0 {
		return "(end)"
	}
	return strconv.Quote(string(end))
}
