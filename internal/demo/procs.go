package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/qslice/qslice/internal/consultest"
)

// process is a program the demo started: in a session of its own, killed when the demo dies
// (Pdeathsig), its output in a log file.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

func startProcess(name, logPath string, argv ...string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() { // owned by the process: ends when it exits, which stop ensures
		_ = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// stop sends SIGTERM, waits up to timeout, then SIGKILLs; it returns once the process is gone.
// Idempotent.
func (p *process) stop(timeout time.Duration) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return
	case <-time.After(timeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// logTail returns the last n lines of the process's log.
func (p *process) logTail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitReady polls ready every 100 ms until it returns nil, the process exits, ctx ends or timeout
// passes.
func (p *process) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		err := ready(rctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w; log:\n%s", p.name, timeout, err, p.logTail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.exited:
			return fmt.Errorf("%s exited during start-up; log:\n%s", p.name, p.logTail(20))
		case <-tick.C:
		}
	}
}

// startTries bounds the starts of Consul and Prometheus on fresh ports when a port was taken
// between its choice and its use.
const startTries = 3

var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil}}

// startConsul runs `consul agent -dev` (a single in-memory server) on free loopback ports and
// waits until it has a leader and its serfHealth check passes (sessions need it). It returns
// the process and host:port of the HTTP API.
func startConsul(ctx context.Context, bin, dir string) (*process, string, error) {
	for try := 1; ; try++ {
		ports, err := consultest.FreePorts(4)
		if err != nil {
			return nil, "", err
		}
		addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
		p, err := startProcess("consul", filepath.Join(dir, "consul.log"), bin, "agent", "-dev", "-node", "demo",
			"-bind", "127.0.0.1", "-client", "127.0.0.1", "-http-port", fmt.Sprint(ports[0]),
			"-serf-lan-port", fmt.Sprint(ports[1]), "-serf-wan-port", fmt.Sprint(ports[2]), "-server-port", fmt.Sprint(ports[3]),
			"-dns-port", "-1", "-grpc-port", "-1", "-log-level", "warn",
			"-hcl", "disable_update_check = true", "-hcl", "ui_config { enabled = false }")
		if err != nil {
			return nil, "", err
		}
		err = p.waitReady(ctx, 60*time.Second, func(ctx context.Context) error {
			var leader string
			if err := getJSON(ctx, "http://"+addr+"/v1/status/leader", &leader); err != nil {
				return err
			}
			if leader == "" {
				return errors.New("no leader yet")
			}
			var checks []struct{ CheckID, Status string }
			if err := getJSON(ctx, "http://"+addr+"/v1/health/node/demo", &checks); err != nil {
				return err
			}
			for _, c := range checks {
				if c.CheckID == "serfHealth" && c.Status == "passing" {
					return nil
				}
			}
			return errors.New("serfHealth not passing yet")
		})
		if err == nil {
			return p, addr, nil
		}
		p.stop(5 * time.Second)
		if try >= startTries || !strings.Contains(p.logTail(50), "address already in use") {
			return nil, "", fmt.Errorf("consul: %w", err)
		}
	}
}

// startPrometheus runs Prometheus on a free loopback port with the configuration text cfg
// (written to dir/prometheus.yml, its data in dir/data) and waits until it is ready. It returns
// the process and the base URL.
func startPrometheus(ctx context.Context, bin, dir, cfg string) (*process, string, error) {
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, "", fmt.Errorf("prometheus config: %w", err)
	}
	for try := 1; ; try++ {
		ports, err := consultest.FreePorts(1)
		if err != nil {
			return nil, "", err
		}
		url := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		p, err := startProcess("prometheus", filepath.Join(dir, "prometheus.log"), bin,
			"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
			fmt.Sprintf("--web.listen-address=127.0.0.1:%d", ports[0]), "--log.level=warn")
		if err != nil {
			return nil, "", err
		}
		err = p.waitReady(ctx, 60*time.Second, func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/-/ready", nil)
			if err != nil {
				return err
			}
			resp, err := httpClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("/-/ready: %s", resp.Status)
			}
			return nil
		})
		if err == nil {
			return p, url, nil
		}
		p.stop(5 * time.Second)
		if try >= startTries || !strings.Contains(p.logTail(50), "address already in use") {
			return nil, "", fmt.Errorf("prometheus: %w", err)
		}
	}
}

// prometheusConfig scrapes the targets as job "qslice" every scrape interval and evaluates the
// rules file as often.
func prometheusConfig(scrape time.Duration, rules string, targets []string) (string, error) {
	cfg := map[string]any{
		"global": map[string]any{
			"scrape_interval":     model.Duration(scrape).String(),
			"scrape_timeout":      model.Duration(scrape * 9 / 10).String(),
			"evaluation_interval": model.Duration(scrape).String(),
		},
		"rule_files":     []string{rules},
		"scrape_configs": []any{map[string]any{"job_name": "qslice", "static_configs": []any{map[string]any{"targets": targets}}}},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("prometheus config: %w", err)
	}
	return string(b), nil
}

// ScaleRules returns the rules file text with every alert's `for:` divided by divisor (at
// least 1 s), everything else as it was; divisor 1 returns it unchanged.
func ScaleRules(text []byte, divisor int) ([]byte, error) {
	if divisor <= 1 {
		return text, nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return nil, fmt.Errorf("scale rules: %w", err)
	}
	var walk func(n *yaml.Node) error
	walk = func(n *yaml.Node) error {
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				if k.Value == "for" && v.Kind == yaml.ScalarNode {
					d, err := model.ParseDuration(v.Value)
					if err != nil {
						return fmt.Errorf("scale rules: line %d: for: %w", v.Line, err)
					}
					v.Value = model.Duration(max(time.Second, time.Duration(d)/time.Duration(divisor)).Round(time.Second)).String()
				}
			}
		}
		for _, c := range n.Content {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(&doc); err != nil {
		return nil, err
	}
	out, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, fmt.Errorf("scale rules: %w", err)
	}
	return out, nil
}
