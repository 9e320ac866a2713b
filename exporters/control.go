package exporters

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

// The control plane. Read-only handlers (Handle) are served on every listener; state-changing
// ones (HandleControl) only to a requester who is known:
//
//   - on the control socket (ServerConfig.ControlSocket, a unix socket of mode 0600 owned by the
//     service user), the peer's uid from SO_PEERCRED: the service user or root;
//   - on TCP, only with ServerConfig.ControlTCP, the basic-auth user or the client certificate
//     that the web configuration verified.
//
// Every state-changing request must also be one that a browser cannot send cross-site without
// a CORS preflight (which is never granted): a POST with Content-Type application/json, no
// foreign Origin and no cross-site Sec-Fetch-Site. On TCP, every path but /healthz and /readyz
// answers only to a Host header that names this node (ServerConfig.AllowedHosts) or is an IP
// address, so that a DNS-rebinding page cannot read the status either.

// Control request results, the label values of qslice_control_requests_total.
const (
	ControlOK      = "ok"      // the change was made
	ControlError   = "error"   // authorised, but the change failed
	ControlRefused = "refused" // not authorised, or not a non-simple same-origin request
)

// maxControlBody bounds a state-changing request's JSON body.
const maxControlBody = 64 << 10

// Requester is who asked for a change.
type Requester struct {
	Via  string // "unix" or "tcp"
	UID  int    // socket peer uid (Via unix)
	User string // the user name: of the uid, the basic-auth user, or "cert:<CN>"
}

func (r Requester) String() string {
	if r.Via == "unix" {
		if r.User != "" {
			return fmt.Sprintf("uid %d (%s) on the control socket", r.UID, r.User)
		}
		return fmt.Sprintf("uid %d on the control socket", r.UID)
	}
	return r.User
}

type requesterKey struct{}
type peerKey struct{}

// RequesterFrom returns who asked for the change being handled (inside a HandleControl handler).
func RequesterFrom(ctx context.Context) (Requester, bool) {
	r, ok := ctx.Value(requesterKey{}).(Requester)
	return r, ok
}

// unixPeer is the credential of a control socket connection.
type unixPeer struct {
	uid int
	err error
}

// peerContext records the SO_PEERCRED uid of a control socket connection in its context.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	p := unixPeer{uid: -1}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		p.err = errors.New("not a unix connection")
		return context.WithValue(ctx, peerKey{}, p)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		p.err = err
		return context.WithValue(ctx, peerKey{}, p)
	}
	var cred *syscall.Ucred
	cerr := raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	switch {
	case cerr != nil:
		p.err = cerr
	case err != nil:
		p.err = fmt.Errorf("SO_PEERCRED: %w", err)
	default:
		p.uid = int(cred.Uid)
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// webAuth is what the control plane needs to know of the web configuration.
type webAuth struct {
	Users map[string]any `yaml:"basic_auth_users"`
	TLS   struct {
		Cert       string `yaml:"cert"`
		CertFile   string `yaml:"cert_file"`
		ClientAuth string `yaml:"client_auth_type"`
	} `yaml:"tls_server_config"`
}

// readWebAuth reads the web configuration file ("" is no file: no TLS, no users).
func readWebAuth(path string) (webAuth, error) {
	var w webAuth
	if path == "" {
		return w, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return w, err
	}
	if err := yaml.Unmarshal(b, &w); err != nil {
		return w, fmt.Errorf("%s: %w", path, err)
	}
	return w, nil
}

// TLS reports whether the web configuration serves HTTPS.
func (w webAuth) tls() bool { return w.TLS.Cert != "" || w.TLS.CertFile != "" }

// authenticates reports whether the web configuration makes every TCP request prove who it is:
// basic-auth users, or client certificates required and verified.
func (w webAuth) authenticates() bool {
	return len(w.Users) > 0 || w.TLS.ClientAuth == "RequireAndVerifyClientCert"
}

// WebConfigServesTLS reports whether the exporter-toolkit web configuration at path serves HTTPS
// ("" serves plain HTTP).
func WebConfigServesTLS(path string) (bool, error) {
	w, err := readWebAuth(path)
	return w.tls(), err
}

// WebConfigAuthenticates reports whether the web configuration at path authenticates every
// request (basic-auth users, or verified client certificates required): the condition for
// state changes on TCP.
func WebConfigAuthenticates(path string) (bool, error) {
	w, err := readWebAuth(path)
	return w.authenticates(), err
}

// controlMetrics counts state-changing requests.
type controlMetrics struct {
	requests *prometheus.CounterVec
}

func newControlMetrics(reg prometheus.Registerer) *controlMetrics {
	m := &controlMetrics{requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "qslice_control_requests_total",
		Help: "State-changing API requests (drain, undrain) by action and result: ok, error (authorised but failed), refused (not authenticated, or a cross-site or simple request).",
	}, []string{"action", "result"})}
	reg.MustRegister(m.requests)
	return m
}

// HandleControl adds the state-changing action served at "POST /api/<action>" (see the control
// plane comment above). h runs only for a known requester (RequesterFrom) and a non-simple,
// same-origin request; its answer's status decides the result counted and logged.
func (s *Server) HandleControl(action string, h http.Handler) {
	for _, r := range []string{ControlOK, ControlError, ControlRefused} {
		s.control.requests.WithLabelValues(action, r)
	}
	s.actions = append(s.actions, action)
	s.mux.Handle("POST /api/"+action, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log := s.cfg.Logger.With("action", action, "remote", r.RemoteAddr)
		who, code, why := s.authorise(r)
		if why != "" {
			log.Warn("control request refused", "by", who.String(), "reason", why)
			s.control.requests.WithLabelValues(action, ControlRefused).Inc()
			writeError(w, code, why)
			return
		}
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		log.Info("control request", "by", who.String())
		h.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), requesterKey{}, who)))
		result := ControlOK
		if rec.code/100 != 2 {
			result = ControlError
		}
		s.control.requests.WithLabelValues(action, result).Inc()
		log.Info("control request done", "by", who.String(), "result", result, "status", rec.code)
	}))
}

// ControlActions lists the state-changing actions added with HandleControl.
func (s *Server) ControlActions() []string { return slices.Clone(s.actions) }

// authorise decides a state-changing request: the requester, or the status and reason of the
// refusal.
func (s *Server) authorise(r *http.Request) (Requester, int, string) {
	who := Requester{Via: "tcp", User: "anonymous"}
	if p, ok := r.Context().Value(peerKey{}).(unixPeer); ok {
		who = Requester{Via: "unix", UID: p.uid}
		if p.err != nil {
			return who, http.StatusForbidden, "cannot tell who is on the control socket: " + p.err.Error()
		}
		if u, err := user.LookupId(strconv.Itoa(p.uid)); err == nil {
			who.User = u.Username
		}
		if p.uid != 0 && p.uid != os.Getuid() {
			return who, http.StatusForbidden, fmt.Sprintf("uid %d may not change this node: only root and the service user (uid %d)", p.uid, os.Getuid())
		}
	} else {
		wa, err := readWebAuth(s.cfg.WebConfigFile)
		if err != nil {
			return who, http.StatusInternalServerError, "web configuration: " + err.Error()
		}
		switch {
		case !s.cfg.ControlTCP:
			return who, http.StatusForbidden, "state changes are served only on this node's control socket (control.socket): " +
				"run the qslice CLI on the node, or set control.tcp with web_config authentication"
		case len(wa.Users) > 0:
			// The exporter-toolkit let the request through: its basic-auth user is verified.
			if u, _, ok := r.BasicAuth(); ok {
				who.User = u
			}
		case r.TLS != nil && len(r.TLS.VerifiedChains) > 0 && len(r.TLS.VerifiedChains[0]) > 0:
			who.User = "cert:" + r.TLS.VerifiedChains[0][0].Subject.CommonName
		}
		if who.User == "anonymous" {
			return who, http.StatusUnauthorized, "state changes on TCP need an authenticated request (web_config basic_auth_users or verified client certificates)"
		}
	}
	if why := crossSite(r); why != "" {
		return who, http.StatusForbidden, why
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return who, http.StatusUnsupportedMediaType, "state changes take a JSON body with Content-Type: application/json"
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxControlBody+1))
	if err != nil {
		return who, http.StatusBadRequest, "reading the body: " + err.Error()
	}
	if len(body) > maxControlBody {
		return who, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", maxControlBody)
	}
	if len(strings.TrimSpace(string(body))) > 0 && !json.Valid(body) {
		return who, http.StatusBadRequest, "the body is not JSON"
	}
	return who, 0, ""
}

// crossSite explains why a request comes from another site, or returns "".
func crossSite(r *http.Request) string {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return "cross-site request refused (Sec-Fetch-Site: " + site + ")"
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
		return fmt.Sprintf("request from origin %q refused: only the node's own pages (%s) may change it", origin, r.Host)
	}
	return ""
}

// hostGuard answers 421 to a request on TCP whose Host names neither this node nor an IP
// address (DNS rebinding), except on /healthz and /readyz.
func hostGuard(allowed []string, next http.Handler) http.Handler {
	if len(allowed) == 0 {
		return next
	}
	ok := map[string]bool{"localhost": true}
	for _, h := range allowed {
		ok[strings.ToLower(strings.TrimSuffix(h, "."))] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" || hostAllowed(ok, r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf("host %q is not a name of this node: add it to control.hosts", r.Host))
	})
}

func hostAllowed(ok map[string]bool, hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	if net.ParseIP(host) != nil {
		return true // an IP literal cannot be rebound: the page's origin is this address itself
	}
	return ok[host]
}

// listenControlSocket binds the control socket: its directory is created if missing, a stale
// socket left by a crash is replaced, a live one (another qslice) is an error; the socket gets
// mode 0600.
func listenControlSocket(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("control socket %s: another process serves it (is qslice already running?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control socket %s: removing the stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	// The listener removes the file when closed.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return l, nil
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
