package consul

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/hashicorp/consul/api"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/internal/retry"
)

// Every Consul request goes through call: bounded by RequestTimeout (blocking queries by their
// wait), counted by operation when it fails, explained, and logged once per problem per outage.

func (c *Coordinator) newBackoff(initial, maxInterval time.Duration) backoff.BackOff {
	// Retry forever; the owner's context stops it.
	return retry.New(retry.Policy{Initial: max(initial, time.Millisecond), Max: maxInterval, Jitter: 0.5}, c.clk)
}

// requestTimeout is how long op may take: RequestTimeout, or for a blocking query its wait
// plus Consul's jitter (wait/16) plus RequestTimeout.
func (c *Coordinator) requestTimeout(op failover.ConsulOp) time.Duration {
	if op.Blocking() {
		return watchWait + watchWait/16 + c.cfg.RequestTimeout
	}
	return c.cfg.RequestTimeout
}

// call runs one Consul request with RequestTimeout (blocking queries set their own), counts and
// explains failures, and logs each change of Consul's state once.
func (c *Coordinator) call(ctx context.Context, op failover.ConsulOp, f func(ctx context.Context) error) error {
	rctx, cancel := context.WithTimeout(ctx, c.requestTimeout(op))
	err := f(rctx)
	cancel()
	if err == nil {
		c.noteOK(op)
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err() // we are stopping; not Consul's fault
	}
	err = c.explain(op, err)
	c.noteErr(op, err)
	return err
}

// outage is one stretch of failing Consul requests, for logging. A restarting Consul flaps: the
// agent answers before the servers elect a leader, requests sent during the election time out
// after others succeeded, the agent is slow while it syncs. So an outage ends only once every
// request has succeeded for one TTL, and each problem is logged once per outage.
type outage struct {
	start      time.Time
	problems   map[string]bool // Error.Problem values already logged
	clearSince time.Time       // when the last failing request recovered; zero while one fails
}

// noteOK clears op's failure and every "Consul unavailable" failure: Consul answered. Failures
// such as a denied permission stay until their own operation succeeds. "consul answers again"
// is logged once per outage, after nothing failed for one TTL.
func (c *Coordinator) noteOK(op failover.ConsulOp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.outage == nil {
		return
	}
	delete(c.failing, op)
	for o, f := range c.failing {
		if errors.Is(f, failover.ErrConsulUnavailable) {
			delete(c.failing, o)
		}
	}
	if len(c.failing) > 0 {
		return
	}
	c.lastErr = ""
	now := c.clk.Now()
	if c.outage.clearSince.IsZero() {
		c.outage.clearSince = now
	}
	if now.Sub(c.outage.clearSince) >= c.cfg.TTL {
		c.log.Info("consul answers again", "consul", c.addr,
			"outage", c.outage.clearSince.Sub(c.outage.start).Round(time.Millisecond), "fine_for", now.Sub(c.outage.clearSince).Round(time.Millisecond))
		c.outage = nil
	}
}

// noteErr counts a failure, keeps it as the current state, and logs it when its problem is new
// in this outage.
func (c *Coordinator) noteErr(op failover.ConsulOp, err error) {
	problem := err.Error()
	if ce := (*Error)(nil); errors.As(err, &ce) {
		problem = ce.Problem
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.errCount[op.String()]++
	c.failing[op] = err
	c.lastErr = err.Error()
	if c.outage == nil {
		c.outage = &outage{start: c.clk.Now(), problems: map[string]bool{}}
	}
	c.outage.clearSince = time.Time{}
	if !c.outage.problems[problem] {
		c.outage.problems[problem] = true
		c.log.Error("consul request failing; retrying with backoff", "op", op, "err", err)
	}
}

// Error explains a failed Consul request and says what to do.
type Error struct {
	Op      string // what we were doing
	Addr    string
	Problem string // "permission denied", "unreachable", ...
	Hint    string
	Kind    error // failover.ErrPermissionDenied, failover.ErrConsulUnavailable or nil
	Err     error // the client's error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s: consul at %s: %s", e.Op, e.Addr, e.Problem)
	if e.Hint != "" {
		s += ": " + e.Hint
	}
	var se api.StatusError
	if errors.As(e.Err, &se) && se.Body != "" {
		s += " (consul said: " + se.Body + ")"
	} else if e.Err != nil && e.Kind != nil {
		s += " (" + e.Err.Error() + ")"
	}
	return s
}

func (e *Error) Unwrap() []error {
	if e.Kind == nil {
		return []error{e.Err}
	}
	return []error{e.Kind, e.Err}
}

func (c *Coordinator) explain(op failover.ConsulOp, err error) error {
	e := &Error{Op: op.Description(), Addr: c.addr, Err: err}
	var se api.StatusError
	var ne net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &se) && (se.Code == 403 || strings.Contains(se.Body, "Permission denied") || strings.Contains(se.Body, "ACL not found")):
		e.Problem, e.Kind = "permission denied", failover.ErrPermissionDenied
		e.Hint = "check the ACL token (CONSUL_HTTP_TOKEN or consul.token)"
	case errors.As(err, &se) && (strings.Contains(se.Body, "No cluster leader") || strings.Contains(se.Body, "leadership lost") || se.Code == 503):
		e.Problem, e.Kind = "no cluster leader", failover.ErrConsulUnavailable
		e.Hint = "Consul servers are electing a leader or lost quorum; retrying"
	case errors.As(err, &se) && se.Code == 429:
		e.Problem, e.Kind = "rate limited", failover.ErrConsulUnavailable
		e.Hint = "raise the agent's http rate limit (limits.http_max_conns_per_client)"
	case errors.As(err, &se):
		e.Problem = fmt.Sprintf("unexpected response %d", se.Code)
	case strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:") || strings.Contains(msg, "server gave HTTP response to HTTPS client"):
		e.Problem, e.Kind = "TLS failure", failover.ErrConsulUnavailable
		e.Hint = "check consul.tls (CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_HTTP_SSL)"
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		e.Problem, e.Kind = "timed out", failover.ErrConsulUnavailable
		e.Hint = fmt.Sprintf("no answer within %s; Consul is slow or unreachable", c.requestTimeout(op))
	default:
		e.Problem, e.Kind = "unreachable", failover.ErrConsulUnavailable
		e.Hint = "is the Consul agent running? check CONSUL_HTTP_ADDR or consul.address"
	}
	return e
}
