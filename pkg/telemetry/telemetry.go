// Package telemetry sets up OpenTelemetry metrics for a Tessera process and
// serves them in Prometheus' text format at /metrics. Components create
// their instruments from Meter; one process (tessera dev runs every tier in
// one) has one registry.
package telemetry

import (
	"net/http"
	"sync"

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
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
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
