package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qslice/qslice/internal/testenv"
)

// socketClient speaks HTTP over the unix socket at path.
func socketClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

// postJSON posts body (nil: "{}") as application/json.
func postJSON(t *testing.T, c *http.Client, url string, hdr http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = v
	}
	return do(t, c, req)
}

func do(t *testing.T, c *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// stateChanging lists every state-changing endpoint of the agent: the tests below run on all.
func stateChanging(t *testing.T, a *Agent) []string {
	acts := a.server.ControlActions()
	if len(acts) < 2 {
		t.Fatalf("state-changing actions %v: want drain and undrain at least", acts)
	}
	return acts
}

func controlCount(a *Agent, action, result string) float64 {
	families, err := a.Registry().Gather()
	if err != nil {
		return -1
	}
	for _, f := range families {
		if f.GetName() != "qslice_control_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			lv := map[string]string{}
			for _, l := range m.GetLabel() {
				lv[l.GetName()] = l.GetValue()
			}
			if lv["action"] == action && lv["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// A browser on the node (or a DNS-rebinding page) cannot change the node: every state-changing
// endpoint refuses, on the control socket and on authenticated TCP alike, a form POST, a
// text/plain POST, a foreign Origin, a cross-site fetch; TCP also refuses a Host that is not the
// node's. Only a same-origin application/json POST by a known requester gets through.
func TestStateChangesRefuseCrossSiteRequests(t *testing.T) {
	dir := t.TempDir()
	webCfg, pool := testenv.WebConfig(t, dir, "admin", "s3cret")
	cfg := standaloneConfig(t, fmt.Sprintf("web_config: %s\ncontrol: {tcp: true, socket: %s}\n", webCfg, testenv.SocketPath(t, "c.sock")))
	a := startAgent(t, cfg, Options{Version: "test"})
	tcp := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + a.Addr()
	sock := socketClient(cfg.Control.Socket)

	type attempt struct {
		name  string
		ctype string
		body  string
		hdr   map[string]string
		want  int
	}
	attempts := []attempt{
		{"form POST", "application/x-www-form-urlencoded", "a=b", nil, http.StatusUnsupportedMediaType},
		{"multipart form POST", "multipart/form-data; boundary=x", "--x--", nil, http.StatusUnsupportedMediaType},
		{"text/plain POST", "text/plain", `{"a":1}`, nil, http.StatusUnsupportedMediaType},
		{"no content type", "", "{}", nil, http.StatusUnsupportedMediaType},
		{"foreign Origin", "application/json", "{}", map[string]string{"Origin": "http://evil.example"}, http.StatusForbidden},
		{"null Origin", "application/json", "{}", map[string]string{"Origin": "null"}, http.StatusForbidden},
		{"cross-site fetch", "application/json", "{}", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"not JSON", "application/json", "a=b", nil, http.StatusBadRequest},
	}
	for _, via := range []struct {
		name   string
		c      *http.Client
		base   string
		extra  []attempt
		authed bool
	}{
		{"tcp", tcp, base, []attempt{{"wrong Host (DNS rebinding)", "application/json", "{}", map[string]string{"Host": "evil.example:" + portOf(a.Addr())}, http.StatusMisdirectedRequest}}, true},
		{"unix", sock, "http://qslice", nil, false},
	} {
		for _, action := range stateChanging(t, a) {
			for _, at := range append(attempts, via.extra...) {
				req, _ := http.NewRequest(http.MethodPost, via.base+"/api/"+action, strings.NewReader(at.body))
				if at.ctype != "" {
					req.Header.Set("Content-Type", at.ctype)
				}
				for k, v := range at.hdr {
					if k == "Host" {
						req.Host = v
					} else {
						req.Header.Set(k, v)
					}
				}
				if via.authed {
					req.SetBasicAuth("admin", "s3cret")
				}
				if code, body := do(t, via.c, req); code != at.want {
					t.Errorf("%s %s via %s: %d %s, want %d", at.name, action, via.name, code, body, at.want)
				}
			}
		}
	}
	if st := a.Status(); st.Draining {
		t.Fatal("a refused request drained the node")
	}
	if n := controlCount(a, "drain", "refused"); n != float64(len(attempts)*2) {
		t.Errorf("qslice_control_requests_total{action=drain,result=refused} = %v, want %d", n, len(attempts)*2)
	}
	// The same-origin JSON requests get through: the node's own Origin is fine.
	self := http.Header{"Origin": {base}}
	self.Set("Authorization", "Basic "+basic("admin", "s3cret"))
	if code, body := postJSON(t, tcp, base+"/api/drain", self); code != 200 {
		t.Fatalf("authenticated same-origin drain: %d %s", code, body)
	}
	if !a.Status().Draining {
		t.Error("drain answered 200 but the node is not draining")
	}
	if code, body := postJSON(t, sock, "http://qslice/api/undrain", nil); code != 200 {
		t.Fatalf("undrain on the socket: %d %s", code, body)
	}
	if n := controlCount(a, "drain", "ok"); n != 1 {
		t.Errorf("drain ok count %v, want 1", n)
	}
	if n := controlCount(a, "undrain", "ok"); n != 1 {
		t.Errorf("undrain ok count %v, want 1", n)
	}
}

func basic(user, pass string) string {
	req, _ := http.NewRequest("GET", "http://x", nil)
	req.SetBasicAuth(user, pass)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// Without control.tcp, TCP serves no state change, whoever asks; with it, only authenticated
// requests. The socket is 0600 and says who asked in the log.
func TestUnauthenticatedTCPDrainRefused(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	cfg := standaloneConfig(t, "")
	a := startAgent(t, cfg, Options{Version: "test", Logger: newTextLogger(logs)})
	base := "http://" + a.Addr()
	c := &http.Client{Timeout: 10 * time.Second}
	for _, action := range stateChanging(t, a) {
		code, body := postJSON(t, c, base+"/api/"+action, nil)
		if code != http.StatusForbidden || !strings.Contains(body, "control socket") {
			t.Errorf("%s on TCP without control.tcp: %d %s, want 403 naming the control socket", action, code, body)
		}
	}
	if a.Status().Draining {
		t.Fatal("unauthenticated TCP drained the node")
	}
	fi, err := os.Stat(cfg.Control.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("control socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	if code, body := postJSON(t, socketClient(cfg.Control.Socket), "http://qslice/api/drain", nil); code != 200 {
		t.Fatalf("drain on the socket: %d %s", code, body)
	}
	want := fmt.Sprintf("by=\"uid %d", os.Getuid())
	poll(t, "the drain logged with the peer uid", 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "control request done") && strings.Contains(logs.String(), want)
	})

	// TCP with web_config basic auth and control.tcp: a wrong password is refused.
	webCfg, pool := testenv.WebConfig(t, t.TempDir(), "admin", "s3cret")
	cfg2 := standaloneConfig(t, fmt.Sprintf("web_config: %s\ncontrol: {tcp: true, socket: \"\"}\n", webCfg))
	b := startAgent(t, cfg2, Options{Version: "test"})
	tc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, hdr := range []http.Header{nil, {"Authorization": {"Basic " + basic("admin", "wrong")}}} {
		if code, _ := postJSON(t, tc, "https://"+b.Addr()+"/api/drain", hdr); code != http.StatusUnauthorized {
			t.Errorf("drain with %v: %d, want 401", hdr, code)
		}
	}
	if b.Status().Draining {
		t.Fatal("a wrong password drained the node")
	}
}

// Host is checked on every endpoint that returns data; /healthz and /readyz answer any Host
// (load balancers), and IP addresses, localhost and control.hosts are the node's names.
func TestHostCheckedOnDataEndpoints(t *testing.T) {
	cfg := standaloneConfig(t, "control: {hosts: [mail1.example.org]}\n")
	a := startAgent(t, cfg, Options{Version: "test"})
	c := &http.Client{Timeout: 10 * time.Second}
	get := func(path, host string) int {
		req, _ := http.NewRequest(http.MethodGet, "http://"+a.Addr()+path, nil)
		req.Host = host
		code, _ := do(t, c, req)
		return code
	}
	for _, path := range []string{"/", "/api/status", "/api/members", "/metrics"} {
		if code := get(path, "rebind.evil.example"); code != http.StatusMisdirectedRequest {
			t.Errorf("GET %s with a foreign Host: %d, want 421", path, code)
		}
		for _, host := range []string{a.Addr(), "localhost:1", "mail1.example.org", "MAIL1.example.org.:9466", "[::1]:9466"} {
			if code := get(path, host); code != 200 {
				t.Errorf("GET %s with Host %s: %d, want 200", path, host, code)
			}
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code := get(path, "rebind.evil.example"); code == http.StatusMisdirectedRequest {
			t.Errorf("GET %s is Host-checked; load balancers must reach it", path)
		}
	}
}

// members on a standalone node: itself, up, owning every slice.
func TestMembersStandalone(t *testing.T) {
	cfg := standaloneConfig(t, "node: solo\n")
	a := startAgent(t, cfg, Options{Version: "v9"})
	var ms Members
	poll(t, "one member owning 4 slices", 10*time.Second, func() bool {
		code, body := do(t, &http.Client{}, mustReq(t, "http://"+a.Addr()+"/api/members"))
		if code != 200 || json.Unmarshal([]byte(body), &ms) != nil {
			return false
		}
		return len(ms.Members) == 1 && ms.Members[0].SlicesOwned == 4
	})
	m := ms.Members[0]
	if m.Node != "solo" || m.State != MemberUp || m.Version != "v9" || m.Address != a.Addr() || m.SlicesHome != 4 || !m.ThisNode {
		t.Errorf("member %+v", m)
	}
}

func mustReq(t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
