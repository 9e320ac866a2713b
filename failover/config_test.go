package failover

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func validConfig() ConsulConfig {
	return ConsulConfig{Cluster: "prod", NodeID: "mx1.example.org", Queues: []QueueSpec{{Name: "out", Slices: 64}, {Name: "in", Slices: 8}}}
}

func TestConfigDefaultsAreValid(t *testing.T) {
	c := validConfig().WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	if c.TTL != 4500*time.Millisecond || c.LockDelay != 2500*time.Millisecond || c.HoldDown != time.Minute || c.RenewInterval != 500*time.Millisecond ||
		c.RequestTimeout != 500*time.Millisecond || c.LeaseMargin != 500*time.Millisecond {
		t.Errorf("unexpected defaults: %+v", c)
	}
	// What the defaults tolerate without a move (docs/failover.md quotes these): a stall of 3 s
	// (so a 1 s pause with room to spare) and a cut off the agent of 2.25 s.
	if c.StallTolerance() != 3*time.Second || c.CutTolerance() != 2250*time.Millisecond {
		t.Errorf("tolerances %s / %s, want 3s / 2.25s", c.StallTolerance(), c.CutTolerance())
	}
	// The test timings (TTL 2s, lock-delay 1s) are valid too and derive 200ms steps.
	c = validConfig()
	c.TTL, c.LockDelay, c.HoldDown = 2*time.Second, time.Second, 3*time.Second
	c = c.WithDefaults()
	if err := c.Validate(); err != nil {
		t.Fatalf("test timings invalid: %v", err)
	}
	if c.RenewInterval != 200*time.Millisecond || c.LeaseMargin != 200*time.Millisecond {
		t.Errorf("derived %s / %s, want 200ms", c.RenewInterval, c.LeaseMargin)
	}
	if c.StallTolerance() != 1400*time.Millisecond || c.CutTolerance() != 1100*time.Millisecond {
		t.Errorf("tolerances %s / %s, want 1.4s / 1.1s", c.StallTolerance(), c.CutTolerance())
	}
}

func TestConfigValidateFieldErrors(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*ConsulConfig)
		want   []string // each must appear in the error
	}{
		{"bad names", func(c *ConsulConfig) { c.Cluster, c.NodeID = "a/b", "" }, []string{`cluster: "a/b": must be 1-63 letters`, `node_id: "": must be 1-63 letters`}},
		{"ttl too short", func(c *ConsulConfig) { c.TTL = 500 * time.Millisecond }, []string{"ttl: must be >= 1s"}},
		{"lock-delay over Consul's cap", func(c *ConsulConfig) { c.LockDelay = 61 * time.Second }, []string{"lock_delay: must be > 0 and <= 1m0s"}},
		{"hold-down shorter than TTL", func(c *ConsulConfig) { c.HoldDown = 4 * time.Second }, []string{"hold_down: must be >= ttl (4.5s)"}},
		{"renew too slow for the TTL", func(c *ConsulConfig) { c.RenewInterval = 5 * time.Second }, []string{"renew_interval: must be > 0 and < ttl/3"}},
		{"lease arithmetic", func(c *ConsulConfig) { c.LeaseMargin = 8 * time.Second },
			[]string{"lease_margin: 2*renew_interval + request_timeout + lease_margin (9.5s) must be < min(ttl, lock_delay) (2.5s)"}},
		{"short lock-delay breaks the lease", func(c *ConsulConfig) { c.LockDelay = 2 * time.Second },
			[]string{"lease_margin: 2*renew_interval + request_timeout + lease_margin"}},
		{"margin below drift", func(c *ConsulConfig) { c.LeaseMargin = time.Millisecond }, []string{"lease_margin: must be >= 50ms"}},
		{"deregister below Consul's minimum", func(c *ConsulConfig) { c.DeregisterCriticalServiceAfter = 30 * time.Second },
			[]string{"deregister_critical_service_after: must be >= 1m0s"}},
		{"no queues", func(c *ConsulConfig) { c.Queues = nil }, []string{"queues: must list at least one queue"}},
		{"bad queues", func(c *ConsulConfig) {
			c.Queues = []QueueSpec{{Name: "out", Slices: 0}, {Name: "out", Slices: 2, Home: map[int][]string{2: {"a"}, 0: {"a", "a", "b/c"}}}, {Name: "a b", Slices: 1}}
		}, []string{"queues[0].slices: must be between 1 and 65536 (got 0)", `queues[1].name: "out": used by two queues`, "queues[1].home.2: slice 2 out of range 0..1",
			`queues[1].home.0[1]: node "a" listed twice`, `queues[1].home.0[2]: node "b/c": must be 1-63 letters`, `queues[2].name: "a b": must be 1-63 letters, digits, '_' or '-'`}},
		{"stuck hand-off needs a delay", func(c *ConsulConfig) { c.StuckHandoff, c.StuckAfter = true, -1 }, []string{"stuck_after: must be > 0"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig().WithDefaults()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("not a *FieldError: %T", err)
			}
		})
	}
}

func TestConfigRejectsTooManyQueuesForMeta(t *testing.T) {
	c := validConfig()
	c.Queues = nil
	for i := 0; i < 60; i++ {
		c.Queues = append(c.Queues, QueueSpec{Name: strings.Repeat("q", 10) + string(rune('a'+i%26)) + string(rune('a'+i/26)), Slices: 1024})
	}
	err := c.WithDefaults().Validate()
	if err == nil || !strings.Contains(err.Error(), "queues: at most 59 queues fit in the service Meta") ||
		!strings.Contains(err.Error(), "more than the 512 a service Meta value holds") {
		t.Fatalf("err = %v", err)
	}
}
