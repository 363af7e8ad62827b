package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if spec := os.Getenv(serveEtcdEnv); spec != "" {
		if err := serveEtcd(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench: etcd:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var p params
	var workloads, targets string
	var verbose bool
	flag.DurationVar(&p.duration, "duration", 5*time.Second, "measured time per workload and target")
	flag.DurationVar(&p.warmup, "warmup", time.Second, "unmeasured warmup before each measurement")
	flag.IntVar(&p.ops, "ops", 0, "if > 0, measure this many ops per workload instead of -duration")
	flag.IntVar(&p.valueSize, "value-size", 256, "value size in bytes")
	flag.IntVar(&p.clients, "clients", 64, "concurrent clients (goroutines) of the -64 workloads")
	flag.IntVar(&p.conns, "conns", 8, "clientv3 clients (gRPC connections) the concurrent goroutines share")
	flag.IntVar(&p.watchRate, "watch-rate", 20, "puts per second of the writer in the watch workloads")
	flag.IntVar(&p.leases, "leases", 5000, "leases the put-64-leases workload grants")
	flag.IntVar(&p.deleteKeys, "delete-keys", 1000000, "keys the delete-1m workload writes, then deletes with one request")
	known := append(append([]string(nil), allWorkloads...), wlPutLeases, wlWatch1k, wlWatch10k, wlDeleteMany, wlFill)
	flag.StringVar(&workloads, "workloads", strings.Join(allWorkloads, ","), "comma list of workloads: "+strings.Join(known, ","))
	flag.StringVar(&targets, "targets", strings.Join(defaultTargets, ","), "comma list of targets: "+strings.Join(allTargets, ","))
	flag.StringVar(&p.profileDir, "cpuprofile-dir", "", "if set, write a CPU profile of each measured workload here (<target>-<workload>.pprof; for dev-proc with -duration also the server's, <target>-<workload>.server.pprof)")
	flag.IntVar(&p.blockRate, "blockprofile-rate", 0, "with -cpuprofile-dir: also write block profiles (<target>-<workload>.block.pprof, and .block-base.pprof to pass to pprof -base), sampling at this rate in ns (see runtime.SetBlockProfileRate)")
	flag.BoolVar(&verbose, "v", false, "log Tessera's warnings (errors are always logged)")
	flag.Parse()

	wls, err := parseList(workloads, known, "workload")
	if err != nil {
		return err
	}
	tgs, err := parseList(targets, allTargets, "target")
	if err != nil {
		return err
	}
	if p.valueSize < 0 || p.clients < 1 || p.conns < 1 || (p.ops <= 0 && p.duration <= 0) || p.watchRate < 1 {
		return fmt.Errorf("bad flags: need value-size >= 0, clients >= 1, conns >= 1, watch-rate >= 1, duration or ops > 0")
	}
	if p.profileDir != "" {
		if err := os.MkdirAll(p.profileDir, 0o755); err != nil {
			return err
		}
		serverProfiles = true
	}

	level := slog.LevelError
	if verbose {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	fmt.Printf("command: %s\n", strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " "))
	fmt.Printf("date:    %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("machine: %s/%s, %d CPUs, GOMAXPROCS=%d, %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	measure := fmt.Sprintf("%s per workload after %s warmup", p.duration, p.warmup)
	if p.ops > 0 {
		measure = fmt.Sprintf("%d ops per workload after %s warmup", p.ops, p.warmup)
	}
	fmt.Printf("load:    %s (/proc/loadavg before the run; other processes skew results)\n", loadAvg())
	fmt.Printf("setup:   %s; value %d B; %d clients over %d connections for the -64 workloads\n\n", measure, p.valueSize, p.clients, p.conns)

	var results []*result
	for _, tn := range tgs {
		t0 := time.Now()
		fmt.Fprintf(os.Stderr, "bench: starting %s\n", tn)
		t, err := startTarget(tn, log)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "bench: %s ready in %s at %v\n", tn, time.Since(t0).Round(time.Millisecond), t.endpoints)
		preloaded := false
		for _, wl := range wls {
			var r *result
			if _, isWatch := watchWorkloads[wl]; isWatch {
				r, err = runWatchWorkload(ctx, wl, t, p)
			} else if wl == wlDeleteMany {
				r, err = runDeleteWorkload(ctx, t, p)
			} else {
				r, err = runWorkload(ctx, wl, t, p, &preloaded)
			}
			if err != nil {
				t.stop()
				return fmt.Errorf("%s on %s: %w", wl, tn, err)
			}
			fmt.Fprintf(os.Stderr, "bench: %-13s %-14s %9.0f ops/s  p50 %-9s p99 %-9s cores %.2f\n", wl, tn, r.opsPerSec(), fmtDur(r.pct(0.50)), fmtDur(r.pct(0.99)), r.cores())
			results = append(results, r)
		}
		t.stop()
	}
	printTable(os.Stdout, results, wls, tgs)
	fmt.Printf("\ncores: CPUs used by this whole process (servers + load generator) while measuring; load after: %s\n", loadAvg())
	return nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "n/a"
	}
	return strings.TrimSpace(string(b))
}

func parseList(s string, allowed []string, what string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(allowed, f) {
			return nil, fmt.Errorf("unknown %s %q (want one of %s)", what, f, strings.Join(allowed, ","))
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s selected", what)
	}
	return out, nil
}

func printTable(w io.Writer, results []*result, wls, tgs []string) {
	byKey := map[[2]string]*result{}
	for _, r := range results {
		byKey[[2]string{r.workload, r.target}] = r
	}
	row := func(cols ...any) {
		line := fmt.Sprintf("%-13s  %-14s  %9s  %9s  %9s  %8s  %5s  %6s  %s", cols...)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	row("workload", "target", "ops/s", "p50", "p99", "vs etcd", "cores", "errors", "note")
	for _, wl := range wls {
		for _, tn := range tgs {
			r := byKey[[2]string{wl, tn}]
			if r == nil {
				continue
			}
			ratio := "-"
			if etcd := byKey[[2]string{wl, baselineOf(tn)}]; tn != baselineOf(tn) && etcd != nil && etcd.opsPerSec() > 0 {
				ratio = fmt.Sprintf("%.2fx", r.opsPerSec()/etcd.opsPerSec())
			}
			row(wl, tn, fmt.Sprintf("%.0f", r.opsPerSec()), fmtDur(r.pct(0.50)), fmtDur(r.pct(0.99)),
				ratio, fmt.Sprintf("%.2f", r.cores()), fmt.Sprint(r.errs), r.note)
		}
	}
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond).String()
	case d >= time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.0fµs", float64(d)/float64(time.Microsecond))
	}
}
