package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/exporters"
	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/fshealth"
	"github.com/qslice/qslice/mailman"
	"github.com/qslice/qslice/runner"
	"github.com/qslice/qslice/runner/queue"
	"github.com/qslice/qslice/runner/supervise"
	"github.com/qslice/qslice/runner/worker"
)

// Config is the whole configuration of one qslice node.
type Config struct {
	Node      string  `yaml:"node"`       // node ID; default: the host name
	Cluster   string  `yaml:"cluster"`    // Consul KV prefix qslice/<cluster>/
	Listen    string  `yaml:"listen"`     // HTTP address for /metrics, /healthz, /readyz and the status page
	WebConfig string  `yaml:"web_config"` // exporter-toolkit web config file (TLS, basic auth)
	Consul    *Consul `yaml:"consul"`     // absent: standalone, this node owns every slice
	Probes    Probes  `yaml:"probes"`
	Queues    []Queue `yaml:"queues"`
	Health    Health  `yaml:"health"`
	Control   Control `yaml:"control"` // who may change the node (drain, undrain) and how
	// StateDir holds the node's local lock (one qslice process per node on a host) and the state
	// file that lets a restarted process resume its own slices (restart in place). Default: the
	// first directory of $STATE_DIRECTORY (systemd's StateDirectory=, /var/lib/qslice in the
	// shipped unit), else none: no lock and no restart in place.
	StateDir string `yaml:"state_dir"`

	path string // the file it was read from, for error messages
}

// Consul configures slice ownership on Consul. Address, token and TLS fall back to the standard
// CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ... variables.
type Consul struct {
	Address      string        `yaml:"address"`
	Token        string        `yaml:"token"`      // prefer CONSUL_HTTP_TOKEN or token_file
	TokenFile    string        `yaml:"token_file"` // file holding the ACL token
	CAFile       string        `yaml:"ca_file"`
	CertFile     string        `yaml:"cert_file"`
	KeyFile      string        `yaml:"key_file"`
	ServerName   string        `yaml:"server_name"`
	TTL          time.Duration `yaml:"ttl"`
	LockDelay    time.Duration `yaml:"lock_delay"`
	HoldDown     time.Duration `yaml:"hold_down"`
	StuckHandoff bool          `yaml:"stuck_handoff"`
	StuckAfter   time.Duration `yaml:"stuck_after"`
	// WatchLayout: "prefix" (default) or "scoped" (single keys; for hundreds of nodes).
	WatchLayout      string        `yaml:"watch_layout"`
	FullReadInterval time.Duration `yaml:"full_read_interval"` // scoped layout: how often every key is read
}

// DefaultControlSocket is where the agent serves state changes, and where the CLI finds it.
const DefaultControlSocket = "/run/qslice/qslice.sock"

// maxSocketPath: a unix socket address holds at most 107 bytes of path (108 with the NUL).
const maxSocketPath = 107

// Control configures the state-changing API (drain, undrain) and the Host names the HTTP
// listener answers to.
type Control struct {
	// Socket is a unix socket (mode 0600, owned by the user qslice runs as) serving the API, state
	// changes included; the CLI on the node uses it. "" disables it.
	Socket string `yaml:"socket"`
	// TCP also serves state changes on listen, to requests web_config authenticates.
	TCP bool `yaml:"tcp"`
	// Hosts: names the listen address answers to besides IP addresses, localhost, the host name
	// and the node name (DNS-rebinding protection), e.g. the name Prometheus or a browser uses.
	Hosts []string `yaml:"hosts"`
}

// Probes configures the read-only observers of the shared disk.
type Probes struct {
	Interval time.Duration `yaml:"interval"`  // rescan period
	Budget   time.Duration `yaml:"budget"`    // time budget of one scan
	LockDirs []string      `yaml:"lock_dirs"` // lock directories to observe (e.g. Mailman's locks/)
	// Bytes counts the bytes of ready messages: one stat per file, which makes a scan of a huge
	// queue about 4x slower than listing it.
	Bytes bool `yaml:"bytes"`
	// BytesMaxFiles: a queue holding more ready files than this is scanned without counting
	// bytes (its bytes metric is absent meanwhile), so a flood costs little more than a listing.
	// 0: no cap.
	BytesMaxFiles int `yaml:"bytes_max_files"`
}

// Health sets when an owned slice is reported unhealthy.
type Health struct {
	MaxAge     time.Duration `yaml:"max_age"`     // warning when the oldest ready message is older
	StallAfter time.Duration `yaml:"stall_after"` // warning when a non-empty backlog made no progress for this long
	// Filesystem: when a queue directory's filesystem counts as unavailable on this node.
	Filesystem FSHealth `yaml:"filesystem"`
}

// FSHealth configures the filesystem watch of each queue directory (package fshealth, where
// the defaults are reasoned).
type FSHealth struct {
	Interval     time.Duration `yaml:"interval"`      // between probes (stat, readdir, canary write+fsync+remove)
	Timeout      time.Duration `yaml:"timeout"`       // no probe answered for this long: unavailable, slices handed off
	RecoverAfter time.Duration `yaml:"recover_after"` // probes answered for this long: available again, slices come back
}

// Queue is one queue directory and how it is worked.
type Queue struct {
	Name          string           `yaml:"name"`
	Dir           string           `yaml:"dir"` // may be empty for a supervised worker that serves no queue directory
	Slices        int              `yaml:"slices"`
	ShuntDir      string           `yaml:"shunt_dir"` // default: <dir>/../shunt, as Mailman
	BadDir        string           `yaml:"bad_dir"`   // default: <dir>/../bad
	Home          map[int][]string `yaml:"home"`      // optional explicit node ranking per slice
	Concurrency   int              `yaml:"concurrency"`
	BatchSize     int              `yaml:"batch_size"`
	PollInterval  time.Duration    `yaml:"poll_interval"`
	LockDir       string           `yaml:"lock_dir"`
	LockTimeout   time.Duration    `yaml:"lock_timeout"`
	Handler       *Handler         `yaml:"handler"`   // qslice runs each message through this
	Supervise     *Supervise       `yaml:"supervise"` // or: qslice supervises external per-slice workers
	Retry         Retry            `yaml:"retry"`
	ShutdownGrace time.Duration    `yaml:"shutdown_grace"`
	// MaxMessageBytes: a queue file larger than this is never read; it goes to bad/ with the
	// reason. Default queue.DefaultMaxMessageBytes (64 MiB).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
}

// Handler is how qslice runs each message: exec (one command per message) or worker (long-lived
// processes speaking docs/worker-protocol.md); a Go handler is given by a program embedding qslice.
type Handler struct {
	Exec     []string          `yaml:"exec"`
	Worker   []string          `yaml:"worker"`    // persistent workers: `concurrency` processes per node
	InFlight int               `yaml:"in_flight"` // worker: messages in flight per process (pipelining)
	Payload  string            `yaml:"payload"`   // native (default) or raw: foreign files (Mailman pickles) handed over whole
	Dir      string            `yaml:"dir"`
	Env      map[string]string `yaml:"env"`
	Timeout  time.Duration     `yaml:"timeout"`
}

// Retry is the backoff for messages whose handler exits 75.
type Retry struct {
	Initial    time.Duration `yaml:"initial"`
	Max        time.Duration `yaml:"max"`
	MaxElapsed time.Duration `yaml:"max_elapsed"`
}

// Supervise runs one external worker per owned slice (e.g. Mailman's runner).
type Supervise struct {
	Command     []string          `yaml:"command"` // placeholders {queue} {slice} {slices}
	Env         map[string]string `yaml:"env"`
	Dir         string            `yaml:"dir"`
	User        string            `yaml:"user"`
	Group       string            `yaml:"group"`
	StopSignal  string            `yaml:"stop_signal"`
	Grace       time.Duration     `yaml:"grace"`
	CrashLoop   int               `yaml:"crash_loop_threshold"`
	CrashWindow time.Duration     `yaml:"crash_loop_window"`
}

// Defaults returns the configuration that an empty file means.
func Defaults() Config {
	host, _ := os.Hostname()
	return Config{
		Node:    host,
		Cluster: "default",
		Listen:  "127.0.0.1:9466",
		Probes:  Probes{Interval: 15 * time.Second, Budget: 10 * time.Second, Bytes: true, BytesMaxFiles: 50_000},
		Health: Health{MaxAge: 15 * time.Minute, StallAfter: 5 * time.Minute, Filesystem: FSHealth{
			Interval: fshealth.DefaultInterval, Timeout: fshealth.DefaultTimeout, RecoverAfter: fshealth.DefaultRecoverAfter}},
		Control:  Control{Socket: DefaultControlSocket},
		StateDir: systemdStateDir(),
	}
}

// systemdStateDir is the first directory systemd passes in $STATE_DIRECTORY (StateDirectory=).
func systemdStateDir() string {
	d, _, _ := strings.Cut(os.Getenv("STATE_DIRECTORY"), ":")
	return d
}

// Load reads a configuration file over the defaults, rejecting unknown keys, and validates it.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w (pass an existing file with --config; see examples/qslice.yaml)", err)
	}
	return Parse(path, data)
}

// Parse is Load on bytes; path only names the source in errors and resolves relative paths.
func Parse(path string, data []byte) (*Config, error) {
	c := Defaults()
	c.path = path
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(path, err)
	}
	var root yaml.Node
	_ = yaml.Unmarshal(data, &root)
	c.resolvePaths()
	if err := c.validate(&root); err != nil {
		return nil, err
	}
	return &c, nil
}

// yamlError names the file and the line of each of yaml.v3's errors as FieldError does
// ("qslice.yaml:5: unknown key ..."), one error per line.
func yamlError(path string, err error) error {
	var errs []error
	lineRE := regexp.MustCompile(`^line (\d+): `)
	for _, msg := range strings.Split(cleanYAMLError(err), "\n") {
		msg = strings.TrimSpace(msg)
		if m := lineRE.FindStringSubmatch(msg); m != nil {
			errs = append(errs, fmt.Errorf("%s:%s: %s", path, m[1], msg[len(m[0]):]))
		} else if msg != "" {
			errs = append(errs, fmt.Errorf("%s: %s", path, msg))
		}
	}
	return errors.Join(errs...)
}

// cleanYAMLError turns yaml.v3's messages into ones that name the key as the file spells it.
func cleanYAMLError(err error) string {
	s := strings.TrimPrefix(err.Error(), "yaml: ")
	s = strings.ReplaceAll(s, "unmarshal errors:\n  ", "")
	s = regexp.MustCompile(`field (\S+) not found in type config\.(\w+)`).ReplaceAllString(s, "unknown key \"$1\" (in $2; check the spelling against examples/qslice.yaml)")
	s = regexp.MustCompile(`cannot unmarshal !!(\w+) `+"`"+`([^`+"`"+`]*)`+"`"+` into (\S+)`).ReplaceAllString(s, "value \"$2\" ($1) is not a valid $3")
	return s
}

// resolvePaths makes relative directories relative to the config file, so that a config works
// from whatever directory qslice is started in.
func (c *Config) resolvePaths() {
	base := filepath.Dir(c.path)
	abs := func(p string) string {
		if p == "" {
			return p
		}
		if filepath.IsAbs(p) {
			return filepath.Clean(p) // "/x/in/" is "/x/in": its shunt/ is /x/shunt, not /x/in/shunt
		}
		return filepath.Join(base, p)
	}
	for i := range c.Queues {
		q := &c.Queues[i]
		q.Dir, q.ShuntDir, q.BadDir, q.LockDir = abs(q.Dir), abs(q.ShuntDir), abs(q.BadDir), abs(q.LockDir)
		q.applyDefaults()
	}
	for i := range c.Probes.LockDirs {
		c.Probes.LockDirs[i] = abs(c.Probes.LockDirs[i])
	}
	if c.WebConfig != "" {
		c.WebConfig = abs(c.WebConfig)
	}
	c.Control.Socket = abs(c.Control.Socket)
	c.StateDir = abs(c.StateDir)
	if c.Consul != nil && c.Consul.TokenFile != "" {
		c.Consul.TokenFile = abs(c.Consul.TokenFile)
	}
}

// FieldError is one invalid field, named by its path in the file.
type FieldError struct {
	File  string
	Line  int
	Field string
	Msg   string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s: %s", e.File, e.Line, e.Field, e.Msg)
	}
	return fmt.Sprintf("%s: %s: %s", e.File, e.Field, e.Msg)
}

// Validate checks every field and returns all problems at once.
func (c *Config) Validate() error { return c.validate(nil) }

// Every rule lives with the component that depends on it and is only mapped to the file here:
// names, slice counts and homes in failover (ValidateQueues, every mode; ValidateSettings,
// Consul), a queue's runner settings in runner.Config.Validate, supervision in supervise. What
// is checked here concerns the file as a whole: directories shared between queues, keys given
// explicitly as 0 where 0 would silently mean the default, handler kinds.
func (c *Config) validate(root *yaml.Node) error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{File: c.path, Line: lineOf(root, field), Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	if err := failover.CheckName(c.Node); err != nil {
		bad("node", "%v", err)
	}
	if err := failover.CheckName(c.Cluster); err != nil {
		bad("cluster", "%v", err)
	}
	if c.Listen != "" && !strings.Contains(c.Listen, ":") {
		bad("listen", "%q: want host:port, e.g. 127.0.0.1:9466", c.Listen)
	}
	if n := len(c.Control.Socket); n > maxSocketPath {
		bad("control.socket", "path is %d bytes; unix sockets allow at most %d", n, maxSocketPath)
	}
	if c.Control.TCP {
		if ok, err := exporters.WebConfigAuthenticates(c.WebConfig); c.WebConfig == "" || err != nil || !ok {
			bad("control.tcp", "needs web_config that authenticates every request (basic_auth_users, or client_auth_type: RequireAndVerifyClientCert)")
		}
	}
	for i, h := range c.Control.Hosts {
		if h == "" || strings.ContainsAny(h, ":/ ") {
			bad(fmt.Sprintf("control.hosts[%d]", i), "%q: want a bare host name, e.g. mail1.example.org", h)
		}
	}
	if c.Probes.Interval <= 0 {
		bad("probes.interval", "must be positive")
	}
	if c.Probes.BytesMaxFiles < 0 {
		bad("probes.bytes_max_files", "must be 0 (no cap) or positive, got %d", c.Probes.BytesMaxFiles)
	}
	if c.Probes.Budget <= 0 || c.Probes.Budget > c.Probes.Interval {
		bad("probes.budget", "must be positive and at most probes.interval (%s)", c.Probes.Interval)
	}
	if fs := c.Health.Filesystem; fs.Interval <= 0 {
		bad("health.filesystem.interval", "must be positive")
	} else if fs.Timeout <= fs.Interval {
		bad("health.filesystem.timeout", "must be above health.filesystem.interval (%s), got %s", fs.Interval, fs.Timeout)
	}
	if c.Health.Filesystem.RecoverAfter <= 0 {
		bad("health.filesystem.recover_after", "must be positive")
	}
	if c.Health.MaxAge < 0 {
		bad("health.max_age", "must not be negative (%s)", c.Health.MaxAge)
	}
	if c.Health.StallAfter < 0 {
		bad("health.stall_after", "must not be negative (%s)", c.Health.StallAfter)
	}
	for _, e := range flatten(failover.ValidateQueues(c.QueueSpecs())) {
		var fe *failover.FieldError
		if errors.As(e, &fe) {
			bad(fe.Field, "%s", fe.Problem)
		} else {
			bad("queues", "%v", e)
		}
	}
	for i, q := range c.Queues {
		p := fmt.Sprintf("queues[%d]", i)
		switch {
		case q.Handler == nil && q.Supervise == nil:
			bad(p, "needs either handler (qslice runs each message) or supervise (qslice runs per-slice workers)")
		case q.Handler != nil && q.Supervise != nil:
			bad(p, "has both handler and supervise; choose one")
		case q.Handler != nil && len(q.Handler.Exec) == 0 && len(q.Handler.Worker) == 0:
			bad(p+".handler", "needs exec (one process per message, e.g. [\"/usr/local/bin/deliver\"]) or worker (long-lived processes speaking the worker protocol, e.g. [\"/usr/bin/python3\", \"/srv/runner.py\"])")
		case q.Handler != nil && len(q.Handler.Exec) > 0 && len(q.Handler.Worker) > 0:
			bad(p+".handler", "has both exec and worker; choose one")
		case q.Handler != nil && len(q.Handler.Exec) > 0 && q.Handler.InFlight != 0:
			bad(p+".handler.in_flight", "applies to worker handlers only")
		case q.Handler != nil && len(q.Handler.Exec) > 0 && q.Handler.Exec[0] == "":
			bad(p+".handler.exec", "must name a program")
		case q.Handler != nil && len(q.Handler.Worker) > 0 && (q.Handler.Worker[0] == "" || q.Handler.InFlight < 0 || q.Handler.InFlight > 1024):
			if q.Handler.Worker[0] == "" {
				bad(p+".handler.worker", "must name a program")
			} else {
				bad(p+".handler.in_flight", "must be between 1 and 1024 (got %d)", q.Handler.InFlight)
			}
		case q.Supervise != nil:
			if _, err := q.SuperviseConfig(); err != nil {
				for _, e := range flatten(err) {
					var fe *supervise.FieldError
					if errors.As(e, &fe) {
						bad(p+"."+fe.Field, "%s", fe.Msg)
					} else {
						bad(p+".supervise", "%v", e)
					}
				}
			}
			// Mailman's rules for its runners: power-of-two slices equal to instances.
			for _, pr := range mailman.Check(mailman.Supervised{Queue: q.Name, Dir: q.Dir, Slices: q.Slices,
				Command: q.Supervise.Command, Env: q.Supervise.Env}, nil) {
				bad(p+"."+pr.Field, "%s", pr.Msg)
			}
		}
		if q.Supervise == nil {
			rc := q.RunnerConfig().WithDefaults()
			if rc.Handler == nil {
				rc.Handler = runner.HandlerFunc(nil) // worker or Go handlers: checked above
			}
			for _, e := range flatten(rc.Validate()) {
				var fe *runner.FieldError
				if errors.As(e, &fe) && fe.Field != "slices" { // slices: failover's message above
					bad(p+"."+fe.Field, "%s", fe.Problem)
				} else if !errors.As(e, &fe) {
					bad(p, "%v", e)
				}
			}
		}
		if q.Handler != nil && q.Handler.Payload != "" && q.Handler.Payload != "native" && q.Handler.Payload != "raw" {
			bad(p+".handler.payload", "%q: must be native or raw", q.Handler.Payload)
		}
		if q.MaxMessageBytes < 0 {
			bad(p+".max_message_bytes", "must be positive (0 or absent: %d)", queue.DefaultMaxMessageBytes)
		}
		for _, key := range zeroMeansDefault {
			if v := valueOf(root, p+"."+key); v != nil && isZeroDuration(v.Value) {
				bad(p+"."+key, "0 is not a valid value here (omit the key for the default)")
			}
		}
	}
	c.checkDirs(root, bad)
	if c.Consul != nil {
		if c.Consul.Token != "" && c.Consul.TokenFile != "" {
			bad("consul.token", "set token or token_file, not both")
		}
		for _, key := range []string{"ttl", "lock_delay", "hold_down", "stuck_after"} {
			if v := valueOf(root, "consul."+key); v != nil && isZeroDuration(v.Value) {
				bad("consul."+key, "0 is not a valid value here (omit the key for the default)")
			}
		}
		if c.Consul.StuckAfter < 0 {
			bad("consul.stuck_after", "must not be negative (%s)", c.Consul.StuckAfter)
		}
		cc, err := c.FailoverConfig()
		if err == nil {
			err = cc.ValidateSettings()
		}
		if err != nil {
			for _, e := range flatten(err) {
				var fe *failover.FieldError
				switch {
				case errors.As(e, &fe) && fe.Field == "queues":
					bad("queues", "%s", fe.Problem)
				case errors.As(e, &fe) && (fe.Field == "cluster" || fe.Field == "node_id"):
					// CheckName above said it, at the file's own key
				case errors.As(e, &fe):
					bad("consul."+strings.TrimPrefix(fe.Field, "consul."), "%s", fe.Problem)
				default:
					bad("consul", "%v", e)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// zeroMeansDefault lists the duration keys of a queue whose Go zero value selects the default:
// written explicitly as 0 in the file, they are refused rather than silently replaced.
var zeroMeansDefault = []string{"poll_interval", "lock_timeout", "shutdown_grace", "retry.initial", "retry.max", "retry.max_elapsed", "handler.timeout"}

func isZeroDuration(s string) bool {
	d, err := time.ParseDuration(s)
	return (err == nil && d == 0) || s == "0"
}

// Warnings lists what is accepted but unwise, for the caller to print (a Consul token written
// in the file in clear).
func (c *Config) Warnings() []string {
	var out []string
	if c.Consul != nil && c.Consul.Token != "" {
		out = append(out, fmt.Sprintf("%s: consul.token: the ACL token is written in the file in clear; prefer consul.token_file (a file only qslice's user can read) or CONSUL_HTTP_TOKEN", c.path))
	}
	return out
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

// valueOf returns the value node of a field path such as "queues[1].retry.max", nil when the
// file does not set it.
func valueOf(root *yaml.Node, path string) *yaml.Node {
	if root == nil || len(root.Content) == 0 {
		return nil
	}
	n := root.Content[0]
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if b := strings.IndexByte(part, '['); b >= 0 && strings.HasSuffix(part, "]") {
			key = part[:b]
			idx, _ = strconv.Atoi(part[b+1 : len(part)-1])
		}
		var next *yaml.Node
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == key {
					next = n.Content[i+1]
					break
				}
			}
		}
		if next == nil {
			return nil
		}
		if idx >= 0 {
			if next.Kind != yaml.SequenceNode || idx >= len(next.Content) {
				return nil
			}
			next = next.Content[idx]
		}
		n = next
	}
	return n
}

// lineOf finds the line of a field path such as "queues[1].handler.exec" in the parsed document,
// or of its nearest present ancestor; 0 when unknown.
func lineOf(root *yaml.Node, path string) int {
	if root == nil || len(root.Content) == 0 {
		return 0
	}
	n := root.Content[0]
	line := 0
	for _, part := range strings.Split(path, ".") {
		key, idx := part, -1
		if b := strings.IndexByte(part, '['); b >= 0 && strings.HasSuffix(part, "]") {
			key = part[:b]
			idx, _ = strconv.Atoi(part[b+1 : len(part)-1])
		}
		next := (*yaml.Node)(nil)
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == key {
					line = n.Content[i].Line
					next = n.Content[i+1]
					break
				}
			}
		}
		if next == nil {
			return line
		}
		if idx >= 0 {
			if next.Kind != yaml.SequenceNode || idx >= len(next.Content) {
				return line
			}
			next = next.Content[idx]
			line = next.Line
		}
		n = next
	}
	return line
}

// applyDefaults fills in what an omitted queue field means, so that `config check` shows it. The
// runner's own defaults are the source: nothing is restated here.
func (q *Queue) applyDefaults() {
	if q.Dir != "" && q.ShuntDir == "" {
		q.ShuntDir = filepath.Join(filepath.Dir(q.Dir), "shunt")
	}
	if q.Dir != "" && q.BadDir == "" {
		q.BadDir = filepath.Join(filepath.Dir(q.Dir), "bad")
	}
	if q.MaxMessageBytes == 0 {
		q.MaxMessageBytes = queue.DefaultMaxMessageBytes
	}
	if q.Supervise != nil {
		return
	}
	d := q.RunnerConfig().WithDefaults()
	q.Concurrency, q.BatchSize, q.PollInterval = d.Concurrency, d.BatchSize, d.PollInterval
	q.LockTimeout, q.ShutdownGrace, q.Retry = d.LockTimeout, d.ShutdownGrace, Retry(d.Retry)
	if q.Handler != nil {
		q.Handler.Timeout = d.HandlerTimeout
		if q.Handler.Payload == "" {
			q.Handler.Payload = "native"
		}
		if len(q.Handler.Worker) > 0 && q.Handler.InFlight == 0 {
			q.Handler.InFlight = worker.DefaultInFlight
		}
	}
}

// RunnerConfig returns the runner settings of queue q (without handler, lease and observers, which
// the agent adds).
func (q Queue) RunnerConfig() runner.Config {
	rc := runner.Config{
		Queue:         q.Name,
		Dir:           queue.NewDir(q.Dir, q.ShuntDir, q.BadDir),
		Slices:        q.Slices,
		Concurrency:   q.Concurrency,
		BatchSize:     q.BatchSize,
		PollInterval:  q.PollInterval,
		LockDir:       q.LockDir,
		LockTimeout:   q.LockTimeout,
		Retry:         runner.RetryPolicy(q.Retry),
		ShutdownGrace: q.ShutdownGrace,
	}
	rc.Dir.MaxBytes = q.MaxMessageBytes
	if q.Handler != nil {
		rc.HandlerTimeout = q.Handler.Timeout
		if rc.HandlerTimeout == 0 {
			rc.HandlerTimeout = runner.DefaultConfig.HandlerTimeout
		}
		env := make([]string, 0, len(q.Handler.Env))
		for k, v := range q.Handler.Env {
			env = append(env, k+"="+v)
		}
		rc.RawPayloads = q.Handler.Payload == "raw"
		if len(q.Handler.Exec) > 0 {
			rc.Handler = &runner.ExecHandler{Command: q.Handler.Exec, Dir: q.Handler.Dir, Env: env}
		}
	}
	return rc
}

// WorkerConfig returns the worker pool settings of a queue with handler.worker (without lease,
// metrics and logger, which the agent adds), and false for other queues. The runner of such a
// queue needs WorkerConfig().RunnerConcurrency() goroutines.
func (q Queue) WorkerConfig() (worker.Config, bool) {
	if q.Handler == nil || len(q.Handler.Worker) == 0 {
		return worker.Config{}, false
	}
	env := make([]string, 0, len(q.Handler.Env))
	for k, v := range q.Handler.Env {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return worker.Config{Queue: q.Name, Command: q.Handler.Worker, Dir: q.Handler.Dir, Env: env,
		Workers: q.RunnerConfig().WithDefaults().Concurrency, InFlight: q.Handler.InFlight}, true
}

// SuperviseConfig returns the supervisor settings of queue q.
func (q Queue) SuperviseConfig() (supervise.Config, error) {
	s := q.Supervise
	sc := supervise.Config{Command: s.Command, Env: s.Env, Dir: s.Dir, User: s.User, Group: s.Group,
		Grace: s.Grace, CrashLoopThreshold: s.CrashLoop, CrashLoopWindow: s.CrashWindow}
	if s.StopSignal != "" {
		sig, err := supervise.ParseSignal(s.StopSignal)
		if err != nil {
			return sc, fmt.Errorf("stop_signal: %w", err)
		}
		sc.StopSignal = sig
	}
	sc = sc.WithDefaults()
	return sc, sc.Validate()
}

// Standalone reports whether no Consul is configured: this node owns every slice.
func (c *Config) Standalone() bool { return c.Consul == nil }

// QueueSpecs lists the queues for the coordinator.
func (c *Config) QueueSpecs() []failover.QueueSpec {
	out := make([]failover.QueueSpec, len(c.Queues))
	for i, q := range c.Queues {
		out[i] = failover.QueueSpec{Name: q.Name, Slices: q.Slices, Home: q.Home}
	}
	return out
}

// FailoverConfig returns the Consul coordinator settings, reading the token file if one is named.
func (c *Config) FailoverConfig() (failover.ConsulConfig, error) {
	k := c.Consul
	fc := failover.ConsulConfig{
		Cluster: c.Cluster, NodeID: c.Node, Address: k.Address, Token: k.Token,
		TLS: failover.TLSConfig{CAFile: k.CAFile, CertFile: k.CertFile, KeyFile: k.KeyFile, ServerName: k.ServerName},
		TTL: k.TTL, LockDelay: k.LockDelay, HoldDown: k.HoldDown,
		StuckHandoff: k.StuckHandoff, StuckAfter: k.StuckAfter,
		WatchLayout: k.WatchLayout, FullReadInterval: k.FullReadInterval,
		Queues: c.QueueSpecs(),
	}
	if k.TokenFile != "" {
		b, err := os.ReadFile(k.TokenFile)
		if err != nil {
			return fc, fmt.Errorf("consul.token_file: %w", err)
		}
		fc.Token = strings.TrimSpace(string(b))
	}
	return fc.WithDefaults(), nil
}

// Redacted returns the effective configuration as YAML with secrets replaced, for `config check`.
func (c *Config) Redacted() ([]byte, error) {
	cp := *c
	if cp.Consul != nil {
		k := *cp.Consul
		if k.Token != "" {
			k.Token = "<redacted>"
		}
		cp.Consul = &k
	}
	return yaml.Marshal(&cp)
}

// HandlerKinds explains the ways a queue's messages can be handled, for `config check`.
const HandlerKinds = `handler kinds: exec runs one process per message (body on stdin, metadata in QSLICE_*
variables; exit 0 done, 75 retry, other shunts); worker keeps concurrency long-lived processes
per node that take messages over the framed protocol of docs/worker-protocol.md (done, retry,
fail; in_flight pipelined per process); a Go handler runs in process, in a program that embeds
qslice (agent.Options.Handlers). supervise: instead runs one external runner per owned slice that
reads the queue itself.`

// Explain says in one line how queue q is worked (after defaults were applied).
func (q Queue) Explain() string {
	switch {
	case q.Supervise != nil:
		return fmt.Sprintf("queue %s: supervise: one `%s` process per owned slice, reading the queue itself", q.Name, strings.Join(q.Supervise.Command, " "))
	case q.Handler != nil && len(q.Handler.Worker) > 0:
		return fmt.Sprintf("queue %s: handler.worker: %d long-lived %s processes per node (concurrency), %d messages in flight each (in_flight), worker protocol v%d", q.Name, q.Concurrency, q.Handler.Worker[0], q.Handler.InFlight, worker.ProtocolVersion)
	case q.Handler != nil:
		return fmt.Sprintf("queue %s: handler.exec: one %s process per message, %d at once per node (concurrency)", q.Name, q.Handler.Exec[0], q.Concurrency)
	}
	return fmt.Sprintf("queue %s: no handler", q.Name)
}
