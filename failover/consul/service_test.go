package consul

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qslice/qslice/failover"
	"github.com/qslice/qslice/failover/failovertest"
	"github.com/qslice/qslice/internal/consultest"
)

// The service instance carries the address, port, tags and Meta the agent asks for, so that
// Prometheus's consul_sd_configs can scrape it; the coordinator's own Meta keys win.
func TestConsulServiceAddressPortTagsMeta(t *testing.T) {
	srv := consultest.Start(t)
	cl := srv.Client("")
	startNode(t, srv, failovertest.NewLedger(), "a", func(c *failover.ConsulConfig) {
		c.ServiceAddress, c.ServicePort = "127.0.0.2", 9466
		c.ServiceTags = []string{"metrics"}
		c.ServiceMeta = map[string]string{"metrics_path": "/metrics", "node": "not-a"}
	})
	consultest.WaitFor(t, 10*time.Second, "service registered with address and port", func() error {
		svcs, _, err := cl.Health().Service(ServiceName, "metrics", false, nil)
		if err != nil {
			return err
		}
		if len(svcs) != 1 {
			return fmt.Errorf("%d instances tagged metrics", len(svcs))
		}
		s := svcs[0].Service
		if s.Address != "127.0.0.2" || s.Port != 9466 {
			return fmt.Errorf("address %q port %d", s.Address, s.Port)
		}
		if !slices.Equal(s.Tags, []string{"cluster-test", "metrics"}) {
			return fmt.Errorf("tags %v", s.Tags)
		}
		if s.Meta["metrics_path"] != "/metrics" || s.Meta["node"] != "a" {
			return fmt.Errorf("meta %v", s.Meta)
		}
		return nil
	})
}
