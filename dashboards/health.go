package dashboards

import (
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/table"
)

// Slice health and supervised workers, shared by the overview and the node dashboard.
//
// qslice_slice_health is 1 for the current state of each slice a node owns and 0 for the other
// two states, so a state per slice is a selection of the 1s; panels that colour a slice by its
// health turn the three series into one level: 0 passing, 1 warning, 2 critical.

// healthLevel is the health level (0 passing, 1 warning, 2 critical) of each slice matched by
// sel, one series per combination of the by labels (which must include queue and slice).
func healthLevel(sel, by string) string {
	return `sum by (` + by + `) (qslice_slice_health{` + sel + `, state="warning"}) + 2 * sum by (` + by + `) (qslice_slice_health{` + sel + `, state="critical"})`
}

// healthMapping colours a health level.
func healthMapping() []dashboard.ValueMapping {
	return valueMap("0", "passing", "green", "1", "warning", "orange", "2", "critical", "red")
}

// workerMapping colours qslice_worker_up.
func workerMapping() []dashboard.ValueMapping {
	return valueMap("0", "down", "red", "1", "running", "green")
}

// drainMapping colours qslice_node_draining.
func drainMapping() []dashboard.ValueMapping {
	return valueMap("0", "active", "green", "1", "drained", "orange")
}

// mapped gives the table column title (after renaming) value mappings and a coloured cell
// background, so that a state reads as a word on its colour.
func mapped(b *table.PanelBuilder, title string, m []dashboard.ValueMapping) *table.PanelBuilder {
	return b.OverrideByName(title, []dashboard.DynamicConfigValue{
		{Id: "mappings", Value: m},
		{Id: "custom.cellOptions", Value: map[string]any{"type": "color-background"}},
	})
}

// fixedColor is a field override property: the series is drawn in this colour.
func fixedColor(c string) []dashboard.DynamicConfigValue {
	return []dashboard.DynamicConfigValue{{Id: "color", Value: map[string]any{"mode": "fixed", "fixedColor": c}}}
}
