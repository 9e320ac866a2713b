package consul

import (
	"testing"

	"github.com/qslice/qslice/failover"
)

func TestParseLockValue(t *testing.T) {
	if v := parseLockValue([]byte(`{"node":"a","reason":"drain","to":"b","avoid":[{"node":"c","until":"2030-01-01T00:00:00Z"}]}`)); v.Node != "a" ||
		v.Reason != failover.ReasonDrain || v.To != "b" || len(v.Avoid) != 1 || !v.Avoid[0].Until.Equal(t0) {
		t.Errorf("parsed %+v", v)
	}
	if v := parseLockValue([]byte("mx1\n")); v.Node != "mx1" {
		t.Errorf("bare name parsed as %+v", v)
	}
}
