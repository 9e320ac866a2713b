package exporters

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qslice/qslice/internal/testenv"
)

// The control socket: mode 0600; a socket file left by a crashed run is replaced; one that a
// live process serves is an error naming it; a path that is no socket is never removed.
func TestControlSocketBinding(t *testing.T) {
	path := testenv.SocketPath(t, "c.sock")
	// A stale socket: bound, then its listener gone without unlinking the file.
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	s, err := NewServer(ServerConfig{Registry: NewRegistry("t", "r"), ListenAddresses: []string{"127.0.0.1:0"}, ControlSocket: path})
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket %v %v, want mode 0600", fi, err)
	}
	// A second server while the first serves it.
	if s2, err := NewServer(ServerConfig{Registry: NewRegistry("t", "r"), ListenAddresses: []string{"127.0.0.1:0"}, ControlSocket: path}); err == nil || !strings.Contains(err.Error(), "already running") {
		if s2 != nil {
			s2.Close()
		}
		t.Errorf("second server on a live socket: %v, want an error saying qslice runs already", err)
	}
	s.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket file left after Close: %v", err)
	}
	// A regular file in the way is an error, and stays.
	file := filepath.Join(filepath.Dir(path), "f")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := NewServer(ServerConfig{Registry: NewRegistry("t", "r"), ListenAddresses: []string{"127.0.0.1:0"}, ControlSocket: file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("regular file as socket: %v", err)
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the regular file was removed: %v", err)
	}
}

// State changes on TCP need a web configuration that authenticates every request.
func TestControlTCPNeedsAuthentication(t *testing.T) {
	dir := t.TempDir()
	tlsOnly := filepath.Join(dir, "tls.yml")
	webCfg, _ := testenv.WebConfig(t, dir, "u", "p")
	os.WriteFile(tlsOnly, []byte("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n"), 0o600)
	for _, wc := range []string{"", tlsOnly} {
		if s, err := NewServer(ServerConfig{Registry: NewRegistry("t", "r"), ListenAddresses: []string{"127.0.0.1:0"}, WebConfigFile: wc, ControlTCP: true}); err == nil {
			s.Close()
			t.Errorf("ControlTCP with web config %q accepted", wc)
		}
	}
	s, err := NewServer(ServerConfig{Registry: NewRegistry("t", "r"), ListenAddresses: []string{"127.0.0.1:0"}, WebConfigFile: webCfg, ControlTCP: true})
	if err != nil {
		t.Fatalf("ControlTCP with basic auth: %v", err)
	}
	s.Close()
}
