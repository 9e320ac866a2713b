package consul

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
)

// delayingProxy forwards to Consul's HTTP API and holds every answer for delay after Consul gave
// it: a request is sent (and takes effect in Consul) long before its answer arrives. For the TTL
// passes and the session reads and creations it records when the last request whose answer was let
// through (with success) had arrived, which is no earlier than when the coordinator sent it.
type delayingProxy struct {
	URL   string
	delay atomic.Int64
	// lastTTL and lastConfirm: arrival times (UnixNano) of the latest answered requests.
	lastTTL, lastConfirm atomic.Int64
}

type arrivalKey struct{}

func newDelayingProxy(t *testing.T, consulAddr string) *delayingProxy {
	t.Helper()
	target, err := url.Parse("http://" + consulAddr)
	if err != nil {
		t.Fatal(err)
	}
	p := &delayingProxy{}
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.ModifyResponse = func(resp *http.Response) error {
		time.Sleep(time.Duration(p.delay.Load()))
		arrived, _ := resp.Request.Context().Value(arrivalKey{}).(int64)
		path := resp.Request.URL.Path
		if resp.StatusCode == http.StatusOK && arrived != 0 {
			switch {
			case strings.HasPrefix(path, "/v1/agent/check/update/") && strings.HasSuffix(path, ":alive"):
				// The node's alive check (its queue checks are TTL checks too, but bind no lease).
				p.lastTTL.Store(arrived)
			case strings.HasPrefix(path, "/v1/session/info/"), path == "/v1/session/create":
				p.lastConfirm.Store(arrived)
			}
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), arrivalKey{}, time.Now().UnixNano())
		rp.ServeHTTP(w, r.WithContext(ctx))
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// TestLeaseStampedWhenSent pins the lease's safety rule: the lease deadline counts from when the
// TTL pass and the confirming read were SENT, never from when their answers arrived (Consul acted
// on a request before its answer came back; docs/failover.md, "Timing"). A proxy holds Consul's
// answers back, and every deadline the node publishes must be no later than the rule allows from
// the latest request answered so far. One case per term of
// D = min(tTTL + TTL, tConfirm + LockDelay) - LeaseMargin, each made the smaller one.
func TestLeaseStampedWhenSent(t *testing.T) {
	const (
		delay  = time.Second
		margin = 800 * time.Millisecond
	)
	for _, c := range []struct {
		name           string
		ttl, lockDelay time.Duration
		last           func(*delayingProxy) int64
	}{
		{"ttl term", 4 * time.Second, 6 * time.Second, func(p *delayingProxy) int64 { return p.lastTTL.Load() }},
		{"confirmation term", 6 * time.Second, 4 * time.Second, func(p *delayingProxy) int64 { return p.lastConfirm.Load() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := consultest.Start(t)
			p := newDelayingProxy(t, srv.HTTPAddr)
			n := startNode(t, srv, failovertest.NewLedger(), "a", func(cfg *failover.ConsulConfig) {
				cfg.Address = p.URL
				cfg.TTL, cfg.LockDelay, cfg.LeaseMargin, cfg.HoldDown = c.ttl, c.lockDelay, margin, c.ttl
				cfg.RenewInterval, cfg.RequestTimeout = 500*time.Millisecond, 1500*time.Millisecond
			})
			waitSettled(t, n)
			p.delay.Store(int64(delay))
			term := min(c.ttl, c.lockDelay)
			var checked, changes int
			last := n.c.ValidUntil()
			for end := time.Now().Add(90 * time.Second); changes < 4; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(end) {
					t.Fatalf("the lease deadline changed %d times in 90 s with answers held %s", changes, delay)
				}
				d := n.c.ValidUntil()
				sent := c.last(p) // read after d: the request d may count from was answered by now
				if !d.Equal(last) {
					last = d
					changes++
				}
				if d.IsZero() || sent == 0 {
					continue
				}
				checked++
				if limit := time.Unix(0, sent).Add(term - margin); d.After(limit) {
					t.Fatalf("lease deadline %s is %s later than %s, what the latest answered request (arrived %s) allows: the deadline counts from an answer, not from the sending",
						d.Format("15:04:05.000"), d.Sub(limit), limit.Format("15:04:05.000"), time.Unix(0, sent).Format("15:04:05.000"))
				}
			}
			if checked == 0 {
				t.Fatal("no deadline checked")
			}
		})
	}
}
