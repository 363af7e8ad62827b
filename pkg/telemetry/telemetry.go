// Package telemetry sets up OpenTelemetry metrics for a Tessera process and
// serves them in Prometheus' text format at /metrics. Components create
// their instruments from Meter; one process (tessera dev runs every tier in
// one) has one registry.
package telemetry

import (
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

var setup struct {
	once    sync.Once
	handler http.Handler
	err     error
}

// Handler returns the /metrics handler, installing the process's meter
// provider the first time.
func Handler() (http.Handler, error) {
	setup.once.Do(func() {
		reg := prometheus.NewRegistry()
		// The Go runtime's and the process's own figures (memory, GC,
		// goroutines, CPU, open files), under Prometheus' usual names.
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tessera_memory_limit_bytes",
				Help: "the process's soft memory limit (--memory-limit or GOMEMLIMIT); 0 if none"},
				func() float64 { return float64(memoryLimit.Load()) }))
		exp, err := otelprom.New(otelprom.WithRegisterer(reg))
		if err != nil {
			setup.err = err
			return
		}
		otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)))
		setup.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	})
	return setup.handler, setup.err
}

// Meter returns a named meter of the process's provider, installing the
// provider first if nothing has yet: what is recorded before /metrics is
// served (a counter's first 0) is kept, not dropped by a delegate.
func Meter(name string) metric.Meter {
	Handler() // an error here is Handler's to report to its caller
	return otel.Meter(name)
}

var profiling atomic.Bool

// EnableProfiling makes Profiles serve Go's runtime profiles at
// /debug/pprof/ (etcd's --enable-pprof): heap, allocs, goroutine, mutex,
// block and a CPU profile on demand. Off by default, as in etcd: a profile
// shows keys and values held in memory to whoever can reach the port.
func EnableProfiling() {
	profiling.Store(true)
	runtime.SetMutexProfileFraction(100)
	runtime.SetBlockProfileRate(int(time.Millisecond)) // waits of 1 ms and more
}

// Profiles serves the profiles on mux once EnableProfiling was called
// (each tier calls it where it serves /metrics).
func Profiles(mux *http.ServeMux) {
	if !profiling.Load() {
		return
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

var memoryLimit atomic.Int64

// SetMemoryLimit publishes the process's soft memory limit as
// tessera_memory_limit_bytes, beside Go's own figures, so that an alert
// can compare resident memory with it.
func SetMemoryLimit(n int64) { memoryLimit.Store(n) }
