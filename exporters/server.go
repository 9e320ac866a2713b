package exporters

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sync/errgroup"
)

// Server timing and limits.
const (
	// DefaultListenAddress is where the agent serves /metrics when nothing is configured.
	DefaultListenAddress = ":9877"
	// DefaultShutdownTimeout bounds the graceful shutdown: in-flight scrapes take milliseconds
	// (Collect only reads snapshots), so anything still open after this is a stuck client.
	DefaultShutdownTimeout = 5 * time.Second
	// readHeaderTimeout protects against clients that open connections and send nothing.
	readHeaderTimeout = 10 * time.Second
	// maxScrapesInFlight: Prometheus servers scrape a target once per interval each; more
	// concurrent scrapes than this means something is wrong, and they get 503.
	maxScrapesInFlight = 8
)

// NewRegistry returns a private registry with the Go runtime, process and build information
// collectors, plus qslice_build_info{version,revision,goversion}. Register the Collector and the
// RunnerMetrics into it.
func NewRegistry(version, revision string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name:        "qslice_build_info",
			Help:        "Always 1; the labels tell which qslice version runs.",
			ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
		}, func() float64 { return 1 }),
	)
	return reg
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// ListenAddresses: host:port pairs to serve on. Default: DefaultListenAddress.
	ListenAddresses []string
	// WebConfigFile is an exporter-toolkit web configuration (TLS, basic auth with bcrypt
	// hashes, HTTP/2, rate limit): https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md.
	// "" serves plain HTTP without authentication. It is re-read on every new connection, so
	// certificates can be rotated in place. Authentication covers every path, /healthz included.
	WebConfigFile string
	// Registry is gathered on /metrics, and receives the handler's own metrics
	// (promhttp_metric_handler_*). Required.
	Registry *prometheus.Registry
	// Ready decides /readyz: nil error is ready, an error's text says why not. nil means always ready.
	Ready func() error
	// Logger: default discard.
	Logger *slog.Logger
	// ShutdownTimeout: default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration

	// ControlSocket is the path of a unix socket (mode 0600) serving every handler without the
	// web configuration: the file's mode and the peer's uid (SO_PEERCRED) are its access
	// control. State changes (HandleControl) are served there. "": none.
	ControlSocket string
	// ControlTCP also serves state changes on the TCP listeners, to requests the web
	// configuration authenticated (basic-auth users or verified client certificates).
	ControlTCP bool
	// AllowedHosts are the Host names (no port) the TCP listeners answer to on every path but
	// /healthz and /readyz, besides IP addresses and localhost (DNS-rebinding protection).
	// Empty: any Host.
	AllowedHosts []string
}

// Server serves /metrics, /healthz and /readyz, and any handler added with Handle, through the
// exporter-toolkit (TLS and basic auth from the web configuration file).
type Server struct {
	cfg       ServerConfig
	mux       *http.ServeMux
	listeners []net.Listener
	control   *controlMetrics
	socket    net.Listener // the control socket, or nil
	actions   []string     // state-changing actions (HandleControl)
	closeOnce sync.Once
}

// NewServer validates the web configuration file and binds the listen addresses, so that both
// kinds of mistake surface at start-up; Run serves.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Registry == nil {
		return nil, errors.New("metrics server: no registry")
	}
	if len(cfg.ListenAddresses) == 0 {
		cfg.ListenAddresses = []string{DefaultListenAddress}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if err := web.Validate(cfg.WebConfigFile); err != nil {
		return nil, fmt.Errorf("web config %s: %w", cfg.WebConfigFile, err)
	}
	if cfg.ControlTCP {
		if ok, err := WebConfigAuthenticates(cfg.WebConfigFile); err != nil || !ok {
			return nil, errors.New("state changes on TCP need a web configuration that authenticates every request (basic_auth_users, or client_auth_type: RequireAndVerifyClientCert)")
		}
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), control: newControlMetrics(cfg.Registry)}
	if cfg.ControlSocket != "" {
		l, err := listenControlSocket(cfg.ControlSocket)
		if err != nil {
			return nil, err
		}
		s.socket = l
	}
	for _, addr := range cfg.ListenAddresses {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("metrics server: listen on %s: %w", addr, err)
		}
		s.listeners = append(s.listeners, l)
	}
	metrics := promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            cfg.Registry,
		MaxRequestsInFlight: maxScrapesInFlight,
		EnableOpenMetrics:   true,
	})
	s.mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(cfg.Registry, metrics))
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if cfg.Ready != nil {
			if err := cfg.Ready(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready:", err)
				return
			}
		}
		fmt.Fprintln(w, "ready")
	})
	return s, nil
}

// Handle adds a handler, such as the status page at "/". Patterns are http.ServeMux's; the
// server's own are "GET /metrics", "GET /healthz" and "GET /readyz".
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Addrs returns the bound addresses (useful with port 0).
func (s *Server) Addrs() []net.Addr {
	out := make([]net.Addr, len(s.listeners))
	for i, l := range s.listeners {
		out[i] = l.Addr()
	}
	return out
}

// Run serves until ctx ends, then shuts down gracefully (open requests get ShutdownTimeout to
// finish) and returns nil. It returns an error if serving fails (a broken TLS certificate, say).
// Run may be called once.
func (s *Server) Run(ctx context.Context) error {
	defer s.Close()
	g, gctx := errgroup.WithContext(ctx)
	servers := make([]*http.Server, len(s.listeners))
	flags := &web.FlagConfig{
		WebListenAddresses: &s.cfg.ListenAddresses,
		WebSystemdSocket:   new(bool),
		WebConfigFile:      &s.cfg.WebConfigFile,
	}
	for i, l := range s.listeners {
		// One http.Server per listener: web.Serve wraps the server's handler, which must not
		// happen twice on one server.
		srv := &http.Server{
			Handler:           hostGuard(s.cfg.AllowedHosts, s.mux),
			ReadHeaderTimeout: readHeaderTimeout,
			ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
		}
		servers[i] = srv
		g.Go(func() error {
			err := web.Serve(l, srv, flags, s.cfg.Logger)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("metrics server on %s: %w", l.Addr(), err)
		})
	}
	if s.socket != nil {
		srv := &http.Server{
			Handler:           s.mux,
			ReadHeaderTimeout: readHeaderTimeout,
			ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
			ConnContext:       peerContext,
		}
		servers = append(servers, srv)
		g.Go(func() error {
			err := srv.Serve(s.socket)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("control socket %s: %w", s.cfg.ControlSocket, err)
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		var errs []error
		for _, srv := range servers {
			if err := srv.Shutdown(sctx); err != nil {
				errs = append(errs, err)
				srv.Close()
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("metrics server shutdown: %w", err)
		}
		return nil
	})
	return g.Wait()
}

// Close releases the listeners of a server that will not Run (Run closes them itself). It is
// idempotent.
func (s *Server) Close() error {
	var errs []error
	s.closeOnce.Do(func() {
		listeners := s.listeners
		if s.socket != nil {
			listeners = append(listeners, s.socket)
		}
		for _, l := range listeners {
			if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	})
	return errors.Join(errs...)
}
