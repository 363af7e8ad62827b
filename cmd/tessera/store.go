package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tessera-kv/tessera/proto/adminpb"
	"github.com/tessera-kv/tessera/proto/metapb"
)

// runStore runs the store admin verbs.
func runStore(args []string) error {
	const usage = "usage: tessera store list [--endpoints URL]"
	if len(args) == 0 || args[0] != "list" {
		return errors.New(usage)
	}
	var resp *adminpb.ListStoresResponse
	err := adminCall(flag.NewFlagSet("store list", flag.ExitOnError), args[1:], 30*time.Second, func(ctx context.Context, c adminpb.AdminClient) (err error) {
		resp, err = c.ListStores(ctx, &adminpb.ListStoresRequest{})
		return err
	})
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTATE\tHEARTBEAT\tLABELS\tREPLICAS\tLEADING\tUSED\tFREE\tAPI")
	for _, s := range resp.Stores {
		beat := "-"
		if s.LastHeartbeatMs >= 0 {
			beat = (time.Duration(s.LastHeartbeatMs) * time.Millisecond).String() + " ago"
		}
		fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\n", s.Store.GetId(), storeState(s.State), beat, labelString(s.Store.GetLabels()),
			len(s.Replicas), len(s.Leading), bytesString(s.UsedBytes), bytesString(s.FreeBytes), s.Store.GetApiAddress())
	}
	return w.Flush()
}

func storeState(s metapb.StoreStatus_State) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STATE_"))
}

func labelString(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func bytesString(n int64) string {
	if n < 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
