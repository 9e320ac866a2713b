package exporters

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/consultest"
	"github.com/qslice/qslice/internal/testenv"
)

// startServer runs a Server on 127.0.0.1:0 until the test ends and returns its base URL.
func startServer(t testing.TB, cfg ServerConfig, scheme string) (*Server, string) {
	t.Helper()
	cfg.ListenAddresses = []string{"127.0.0.1:0"}
	s, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Start(t, "metrics server", 10*time.Second, s.Run)
	return s, scheme + "://" + s.Addrs()[0].String()
}

func get(t testing.TB, c *http.Client, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestServerEndpoints(t *testing.T) {
	p := fixture(t)
	reg := NewRegistry("1.2.3", "abc123")
	reg.MustRegister(fixtureCollector(p))
	if _, err := NewRunnerMetrics(reg, []string{"in"}); err != nil {
		t.Fatal(err)
	}
	var agentReady atomic.Bool
	s, base := startServer(t, ServerConfig{
		Registry: reg,
		Ready: func() error {
			if err := p.Ready(); err != nil {
				return err
			}
			if !agentReady.Load() {
				return errors.New("slices not yet acquired")
			}
			return nil
		},
	}, "http")
	s.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "status page") }))
	c := &http.Client{Timeout: 10 * time.Second}

	code, body := get(t, c, base+"/metrics", "", "")
	for _, want := range []string{
		`qslice_queue_ready_messages{queue="in",slice="0"} 2`,
		`qslice_build_info{goversion="go`, `revision="abc123",version="1.2.3"} 1`,
		"go_goroutines ", "process_cpu_seconds_total", "go_build_info",
		`qslice_messages_handled_total{outcome="done",queue="in"} 0`,
		"promhttp_metric_handler_requests_total",
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics: %d, missing %q", code, want)
		}
	}
	if code, body := get(t, c, base+"/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, c, base+"/readyz", "", ""); code != 503 || !strings.Contains(body, "slices not yet acquired") {
		t.Errorf("/readyz before ready: %d %q", code, body)
	}
	agentReady.Store(true)
	if code, body := get(t, c, base+"/readyz", "", ""); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body := get(t, c, base+"/", "", ""); code != 200 || body != "status page" {
		t.Errorf("/: %d %q", code, body)
	}
	if code, _ := get(t, c, base+"/nope", "", ""); code != 404 {
		t.Errorf("/nope: %d", code)
	}
}

func TestServerTLSAndBasicAuth(t *testing.T) {
	webCfg, pool := testenv.WebConfig(t, t.TempDir(), "prometheus", "s3cret")
	_, base := startServer(t, ServerConfig{Registry: NewRegistry("test", "abc123"), WebConfigFile: webCfg}, "https")
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if code, _ := get(t, c, base+"/metrics", "", ""); code != 401 {
		t.Errorf("/metrics without credentials: %d, want 401", code)
	}
	if code, _ := get(t, c, base+"/metrics", "prometheus", "wrong"); code != 401 {
		t.Errorf("/metrics with a wrong password: %d, want 401", code)
	}
	if code, body := get(t, c, base+"/metrics", "prometheus", "s3cret"); code != 200 || !strings.Contains(body, "qslice_build_info") {
		t.Errorf("/metrics with credentials: %d", code)
	}
	if code, _ := get(t, c, base+"/healthz", "prometheus", "s3cret"); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	// Plain HTTP to the TLS port does not get the metrics.
	plain := &http.Client{Timeout: 10 * time.Second}
	if code, _ := get(t, plain, "http"+strings.TrimPrefix(base, "https")+"/metrics", "prometheus", "s3cret"); code == 200 {
		t.Error("plain HTTP served metrics on the TLS listener")
	}
}

func TestServerConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "web.yml")
	os.WriteFile(bad, []byte("basic_auth_users:\n  u: not-a-bcrypt-hash\n"), 0o600)
	for _, cfg := range []ServerConfig{
		{Registry: NewRegistry("t", "abc123"), ListenAddresses: []string{"127.0.0.1:0"}, WebConfigFile: bad},
		{Registry: NewRegistry("t", "abc123"), ListenAddresses: []string{"127.0.0.1:0"}, WebConfigFile: filepath.Join(dir, "missing.yml")},
		{Registry: NewRegistry("t", "abc123"), ListenAddresses: []string{"256.0.0.1:0"}},
		{ListenAddresses: []string{"127.0.0.1:0"}},
	} {
		if s, err := NewServer(cfg); err == nil {
			s.Close()
			t.Errorf("NewServer(%+v) succeeded", cfg)
		}
	}
	// A server that never runs releases its port on Close, and Close is idempotent. The port is
	// below the ephemeral range: a port from :0, once released, may go at once to any process's
	// outgoing connection.
	ports, err := consultest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	s, err := NewServer(ServerConfig{Registry: NewRegistry("t", "abc123"), ListenAddresses: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("port not released: %v", err)
	}
	l.Close()
}
