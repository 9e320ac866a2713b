package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/qslice/qslice/config"
	"github.com/qslice/qslice/exporters"
)

// DefaultConfigPath is the configuration file read when neither --config nor QSLICE_CONFIG names one.
const DefaultConfigPath = "/etc/qslice/qslice.yaml"

// Environment variables of the API client, after the consul CLI's CONSUL_HTTP_ADDR, CONSUL_CACERT, ...
const (
	envConfig        = "QSLICE_CONFIG"
	envAddr          = "QSLICE_ADDR"
	envCACert        = "QSLICE_CACERT"
	envClientCert    = "QSLICE_CLIENT_CERT"
	envClientKey     = "QSLICE_CLIENT_KEY"
	envTLSServerName = "QSLICE_TLS_SERVER_NAME"
	envSSLVerify     = "QSLICE_HTTP_SSL_VERIFY"
	envHTTPAuth      = "QSLICE_HTTP_AUTH"
	envHTTPAuthFile  = "QSLICE_HTTP_AUTH_FILE"
)

// configPath is the configuration file to use: the flag, else QSLICE_CONFIG, else the default.
// explicit tells whether it was asked for (a missing default is no error for the API client).
func configPath(flag string) (path string, explicit bool) {
	if flag != "" {
		return flag, true
	}
	if v := os.Getenv(envConfig); v != "" {
		return v, true
	}
	return DefaultConfigPath, false
}

// clientFlags are the flags of the commands that talk to a node's agent.
type clientFlags struct {
	config     string
	addr       string
	caFile     string
	clientCert string
	clientKey  string
	serverName string
	authFile   string
}

func (f *clientFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.StringVarP(&f.config, "config", "c", "", "configuration file (default: $"+envConfig+", else "+DefaultConfigPath+"); gives the agent's address when --addr is not set")
	fs.StringVar(&f.addr, "addr", "", "agent address: unix:/path/to.sock, http(s)://host:port or host:port (default: $"+envAddr+", else the config's control.socket, else its listen)")
	fs.StringVar(&f.caFile, "ca-file", "", "CA certificate to verify the agent's TLS certificate (default: $"+envCACert+")")
	fs.StringVar(&f.clientCert, "client-cert", "", "client certificate for TLS (default: $"+envClientCert+")")
	fs.StringVar(&f.clientKey, "client-key", "", "client key for TLS (default: $"+envClientKey+")")
	fs.StringVar(&f.serverName, "tls-server-name", "", "server name to verify the agent's certificate against (default: $"+envTLSServerName+")")
	fs.StringVar(&f.authFile, "http-auth-file", "", "file holding user:password for basic auth (default: $"+envHTTPAuthFile+"; or set $"+envHTTPAuth+"=user:password); never on the command line")
}

func orEnv(v, env string) string {
	if v != "" {
		return v
	}
	return os.Getenv(env)
}

// apiClient talks to one agent's HTTP API.
type apiClient struct {
	base    string // URL prefix of the API
	display string // the address as the user would write it
	hc      *http.Client
	user    string
	pass    string
}

// newClient resolves the agent's address and credentials: --addr, $QSLICE_ADDR, the config's
// control socket or listen address, or the default control socket when there is no config.
func (f *clientFlags) newClient() (*apiClient, error) {
	addr := orEnv(f.addr, envAddr)
	if addr == "" {
		path, explicit := configPath(f.config)
		cfg, err := config.Load(path)
		switch {
		case err == nil && cfg.Control.Socket != "":
			addr = "unix:" + cfg.Control.Socket
		case err == nil:
			addr = listenURL(cfg.Listen)
			if ok, _ := exporters.WebConfigServesTLS(cfg.WebConfig); ok {
				addr = "https://" + strings.TrimPrefix(addr, "http://")
			}
		case explicit || !errors.Is(err, os.ErrNotExist):
			return nil, &exitError{code: exitUsage, err: fmt.Errorf("invalid configuration:\n%w", err)}
		default:
			addr = "unix:" + config.DefaultControlSocket
		}
	}
	c := &apiClient{display: addr}
	tr := &http.Transport{Proxy: http.ProxyFromEnvironment}
	switch {
	case strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "/"):
		path := strings.TrimPrefix(strings.TrimPrefix(addr, "unix:"), "//")
		if path == "" {
			return nil, usageErr("--addr %q: want unix:/path/to.sock", addr)
		}
		c.display = "unix:" + path
		c.base = "http://localhost"
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}
	default:
		if !strings.Contains(addr, "://") {
			addr = "http://" + addr
		}
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, usageErr("--addr %q: want unix:/path/to.sock, http(s)://host:port or host:port", c.display)
		}
		c.base = strings.TrimSuffix(u.String(), "/")
		if u.Scheme == "https" {
			tc, err := f.tlsConfig()
			if err != nil {
				return nil, err
			}
			tr.TLSClientConfig = tc
		}
	}
	var err error
	if c.user, c.pass, err = f.credentials(); err != nil {
		return nil, err
	}
	c.hc = &http.Client{Transport: tr}
	return c, nil
}

// listenURL turns a listen address into a URL to reach it on this host.
func listenURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (f *clientFlags) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{ServerName: orEnv(f.serverName, envTLSServerName)}
	if ca := orEnv(f.caFile, envCACert); ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, usageErr("CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usageErr("CA file %s: no PEM certificate in it", ca)
		}
		tc.RootCAs = pool
	}
	cert, key := orEnv(f.clientCert, envClientCert), orEnv(f.clientKey, envClientKey)
	if (cert == "") != (key == "") {
		return nil, usageErr("a client certificate needs both --client-cert and --client-key (or $%s and $%s)", envClientCert, envClientKey)
	}
	if cert != "" {
		kp, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, usageErr("client certificate: %v", err)
		}
		tc.Certificates = []tls.Certificate{kp}
	}
	if v := os.Getenv(envSSLVerify); v != "" {
		verify, err := strconv.ParseBool(v)
		if err != nil {
			return nil, usageErr("$%s=%q: want true or false", envSSLVerify, v)
		}
		tc.InsecureSkipVerify = !verify
	}
	return tc, nil
}

// credentials reads user:password from --http-auth-file, $QSLICE_HTTP_AUTH_FILE or
// $QSLICE_HTTP_AUTH, like the consul CLI's CONSUL_HTTP_AUTH.
func (f *clientFlags) credentials() (string, string, error) {
	s, from := os.Getenv(envHTTPAuth), "$"+envHTTPAuth
	if file := orEnv(f.authFile, envHTTPAuthFile); file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", usageErr("http auth file: %v", err)
		}
		s, from = strings.TrimRight(strings.SplitN(string(b), "\n", 2)[0], "\r"), file
	}
	if s == "" {
		return "", "", nil
	}
	user, pass, ok := strings.Cut(s, ":")
	if !ok || user == "" {
		return "", "", usageErr("%s: want user:password", from)
	}
	return user, pass, nil
}

// get reads a JSON document from the agent.
func (c *apiClient) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, out)
}

// post asks for a state change: a JSON POST, as the agent requires.
func (c *apiClient) post(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodPost, path, out)
}

func (c *apiClient) do(ctx context.Context, method, path string, out any) error {
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.pass)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.explain(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusUnauthorized {
		if c.user == "" {
			return fmt.Errorf("the agent at %s wants credentials: set %s=user:password or --http-auth-file FILE", c.display, envHTTPAuth)
		}
		return fmt.Errorf("the agent at %s refused the credentials of user %q", c.display, c.user)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("agent at %s: %s", c.display, e.Error)
		}
		return fmt.Errorf("agent at %s answered %s: %s", c.display, resp.Status, bytes.TrimSpace(b))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("agent at %s: reading its answer: %w", c.display, err)
		}
	}
	return nil
}

func (c *apiClient) explain(err error) error {
	var hint string
	switch {
	case errors.Is(err, syscall.EACCES) || errors.Is(err, os.ErrPermission):
		hint = "the control socket is only for the user qslice runs as: run this as that user or root (sudo -u qslice ...), or use --addr with the listen address for reading"
	case strings.HasPrefix(c.display, "unix:") && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)):
		hint = "is `qslice run` running on this node with this config? (its control.socket)"
	case errors.As(err, new(x509.UnknownAuthorityError)) || errors.As(err, new(*tls.CertificateVerificationError)):
		hint = "pass the CA that signed the agent's certificate with --ca-file or $" + envCACert
	default:
		hint = "is `qslice run` running on this node with this config? (--addr, $" + envAddr + ")"
	}
	return fmt.Errorf("cannot reach the qslice agent at %s: %w (%s)", c.display, err, hint)
}

// show reads path from the agent into v and prints it, as indented JSON or with text.
func (f *clientFlags) show(cmd *cobra.Command, path string, v any, asJSON bool, text func(io.Writer)) error {
	c, err := f.newClient()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
	defer cancel()
	if err := c.get(ctx, path, v); err != nil {
		return err
	}
	if !asJSON {
		text(cmd.OutOrStdout())
		return nil
	}
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
