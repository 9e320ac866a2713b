package consul

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestEntryLive(t *testing.T) {
	entry := func(checks ...*api.HealthCheck) *api.ServiceEntry {
		return &api.ServiceEntry{Service: &api.AgentService{ID: "qslice-c-a"}, Checks: checks}
	}
	alive := &api.HealthCheck{CheckID: "qslice-c-a:alive", ServiceID: "qslice-c-a", Status: api.HealthPassing}
	serf := &api.HealthCheck{CheckID: "serfHealth", Status: api.HealthPassing}
	queueCrit := &api.HealthCheck{CheckID: "qslice-c-a:queue:out", ServiceID: "qslice-c-a", Status: api.HealthCritical}
	cases := []struct {
		name string
		e    *api.ServiceEntry
		want bool
	}{
		{"alive", entry(serf, alive), true},
		{"a failing queue does not take the node out", entry(serf, alive, queueCrit), true},
		{"alive check missing", entry(serf), false},
		{"alive check critical", entry(serf, &api.HealthCheck{CheckID: "qslice-c-a:alive", ServiceID: "qslice-c-a", Status: api.HealthCritical}), false},
		{"serf failing", entry(&api.HealthCheck{CheckID: "serfHealth", Status: api.HealthCritical}, alive), false},
		{"node maintenance", entry(serf, alive, &api.HealthCheck{CheckID: "_node_maintenance", Status: api.HealthCritical}), false},
		{"service maintenance", entry(serf, alive, &api.HealthCheck{CheckID: "_service_maintenance:qslice-c-a", ServiceID: "qslice-c-a", Status: api.HealthCritical}), false},
	}
	for _, c := range cases {
		if got := entryLive(c.e); got != c.want {
			t.Errorf("%s: live = %v", c.name, got)
		}
	}
}
