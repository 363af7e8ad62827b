package telemetry

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The runtime's memory figures, under the names etcd exports, and the
// limit they are compared with, are on /metrics; the profiles only once
// enabled.
func TestRuntimeMetricsAndProfiles(t *testing.T) {
	SetMemoryLimit(123 << 20)
	get := func(mux *http.ServeMux, path string) (int, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	h, err := Handler()
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	Profiles(mux)
	_, body := get(mux, "/metrics")
	for _, name := range []string{"go_memstats_heap_inuse_bytes", "go_memstats_sys_bytes", "go_goroutines", "go_gc_duration_seconds",
		"process_resident_memory_bytes", "tessera_memory_limit_bytes 1.28974848e+08"} {
		if !strings.Contains(body, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if code, _ := get(mux, "/debug/pprof/"); code != http.StatusNotFound {
		t.Errorf("profiles served before EnableProfiling: %d", code)
	}
	EnableProfiling()
	defer profiling.Store(false)
	mux = http.NewServeMux()
	Profiles(mux)
	if code, body := get(mux, "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("heap profile: %d %.80q", code, body)
	}
}
