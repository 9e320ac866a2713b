package dashboards

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
	"github.com/grafana/grafana-foundation-sdk/go/stat"
	"github.com/grafana/grafana-foundation-sdk/go/statetimeline"
	"github.com/grafana/grafana-foundation-sdk/go/table"
	"github.com/grafana/grafana-foundation-sdk/go/timeseries"
)

// Units used by the panels (Grafana unit ids). Rates get a custom suffix naming what is
// counted, so that a reader never has to guess what "1.2/s" counts.
const (
	unitCount   = "short"         // a number of things, abbreviated (1.2K)
	unitNone    = "none"          // a plain number: flags, states, ids
	unitSeconds = "s"             // durations and ages, in base units
	unitBytes   = "bytes"         // sizes
	unitCPU     = "percentunit"   // CPU seconds per second: 1 is one core
	unitMsgRate = "suffix: msg/s" // messages per second
	unitErrRate = "suffix: err/s" // failed requests per second
	unitPerSec  = "suffix: /s"    // other events per second
)

// DatasourceVar is the name of the data source variable; every panel queries ${DatasourceVar}.
const DatasourceVar = "datasource"

// Generated names the JSON files Render produces, by dashboard uid.
var Generated = map[string]string{
	"qslice-overview": "qslice-overview.json",
	"qslice-queues":   "qslice-queues.json",
	"qslice-locks":    "qslice-locks.json",
	"qslice-node":     "qslice-node.json",
}

// Dashboards builds every qslice dashboard.
func Dashboards() ([]dashboard.Dashboard, error) {
	builders := []func() *dashboard.DashboardBuilder{overview, queues, locks, node}
	out := make([]dashboard.Dashboard, 0, len(builders))
	for _, b := range builders {
		d, err := b().Build()
		if err != nil {
			return nil, fmt.Errorf("build dashboard: %w", err)
		}
		assignIDs(&d)
		if err := linkRunbooks(&d); err != nil {
			return nil, err
		}
		for i := range d.Links {
			// The SDK defaults to Grafana 12's "inControlsMenu", which hides the links in a menu;
			// unset, they show above the panels in every Grafana version.
			d.Links[i].Placement = nil
		}
		out = append(out, d)
	}
	return out, nil
}

//go:generate go test -run TestGolden -update

// Render returns the content of every generated file, by file name (see Generated): indented
// JSON with a final newline, stable from one run to the next.
func Render() (map[string][]byte, error) {
	ds, err := Dashboards()
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(ds))
	for _, d := range ds {
		name, ok := Generated[*d.Uid]
		if !ok {
			return nil, fmt.Errorf("render dashboard %s: no file name in Generated", *d.Uid)
		}
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false) // keep PromQL's <, > and & readable in the files
		enc.SetIndent("", "  ")
		if err := enc.Encode(d); err != nil {
			return nil, fmt.Errorf("render dashboard %s: %w", *d.Uid, err)
		}
		out[name] = buf.Bytes()
	}
	return out, nil
}

// assignIDs numbers panels and rows in layout order, so that ids are unique and stable.
func assignIDs(d *dashboard.Dashboard) {
	id := uint32(0)
	for i := range d.Panels {
		id++
		switch p := d.Panels[i]; {
		case p.Panel != nil:
			p.Panel.Id = cog.ToPtr(id)
		case p.RowPanel != nil:
			p.RowPanel.Id = id
		}
	}
}

// datasource is the reference every panel and variable uses.
func datasource() common.DataSourceRef {
	return common.DataSourceRef{Type: cog.ToPtr("prometheus"), Uid: cog.ToPtr("${" + DatasourceVar + "}")}
}

// newDashboard starts a qslice dashboard with the shared settings, links and variables.
func newDashboard(uid, title, description string, vars ...cog.Builder[dashboard.VariableModel]) *dashboard.DashboardBuilder {
	b := dashboard.NewDashboardBuilder(title).
		Uid(uid).
		Description(description).
		Tags([]string{"qslice"}).
		Refresh("30s").
		Time("now-6h", "now").
		Timezone(common.TimeZoneBrowser).
		Tooltip(dashboard.DashboardCursorSyncCrosshair).
		Link(dashboard.NewDashboardLinkBuilder("qslice").
			Type(dashboard.DashboardLinkTypeDashboards).
			Icon("external link").
			Tooltip("The other qslice dashboards").
			Tags([]string{"qslice"}).
			AsDropdown(true).
			IncludeVars(true).
			KeepTime(true)).
		Annotation(failoverAnnotation()).
		WithVariable(dashboard.NewDatasourceVariableBuilder(DatasourceVar).
			Label("Data source").
			Type("prometheus").
			Description("The Prometheus that scrapes the qslice agents."))
	for _, v := range vars {
		b.WithVariable(v)
	}
	return b
}

// queryVar is a label_values variable over the data source; multi selects with "All".
func queryVar(name, label, description, query string, multi bool) *dashboard.QueryVariableBuilder {
	return dashboard.NewQueryVariableBuilder(name).
		Label(label).
		Description(description).
		Datasource(datasource()).
		Query(dashboard.StringOrMap{String: cog.ToPtr(query)}).
		Definition(query).
		Refresh(dashboard.VariableRefreshOnTimeRangeChanged).
		Sort(dashboard.VariableSortNaturalAsc).
		Multi(multi).
		IncludeAll(multi)
}

func jobVar() *dashboard.QueryVariableBuilder {
	return queryVar("job", "Job", "The scrape job of a qslice cluster (one job per cluster).",
		`label_values(qslice_build_info, job)`, true)
}

func instanceVar(multi bool) *dashboard.QueryVariableBuilder {
	return queryVar("instance", "Node", "A qslice agent, by its scrape address.",
		`label_values(qslice_build_info{job=~"$job"}, instance)`, multi)
}

func queueVar() *dashboard.QueryVariableBuilder {
	return queryVar("queue", "Queue", "Queues as configured on the nodes.",
		`label_values(qslice_queue_scan_success{job=~"$job"}, queue)`, true)
}

func lockVar() *dashboard.QueryVariableBuilder {
	return queryVar("lock", "Lock directory", "Observed lock directories (probes.lock_dirs and the queues' lock_dir).",
		`label_values(qslice_lock_scan_success{job=~"$job"}, lock)`, true)
}

// query is one PromQL target of a panel.
type query struct {
	expr, legend string
	instant      bool // an instant query, formatted as a table (for table panels)
}

func q(expr, legend string) query { return query{expr: expr, legend: legend} }

// tableQuery is an instant query in table format; its value column is "Value #<ref>".
func tableQuery(expr string) query { return query{expr: expr, instant: true} }

// targets turns queries into data query builders with refIds A, B, ...
func targets(qs []query) []cog.Builder[variants.Dataquery] {
	out := make([]cog.Builder[variants.Dataquery], 0, len(qs))
	for i, x := range qs {
		b := prometheus.NewDataqueryBuilder().
			Datasource(datasource()).
			RefId(string(rune('A' + i))).
			Expr(x.expr)
		if x.instant {
			b.Instant().Format(prometheus.PromQueryFormatTable)
		} else {
			b.Range().LegendFormat(x.legend)
		}
		out = append(out, b)
	}
	return out
}

// size is a panel's width (of 24 columns) and height (grid rows of 30 px).
type size struct{ w, h uint32 }

var (
	small  = size{4, 4}
	wide   = size{8, 4} // a stat showing a text (names)
	quart  = size{6, 4} // four stats on a line
	third  = size{8, 8}
	half   = size{12, 8}
	full   = size{24, 9}
	tall   = size{24, 12}
	halfHi = size{12, 10}
)

func legendTable() *common.VizLegendOptionsBuilder {
	return common.NewVizLegendOptionsBuilder().
		DisplayMode(common.LegendDisplayModeTable).
		Placement(common.LegendPlacementBottom).
		ShowLegend(true).
		Calcs([]string{"lastNotNull", "max"})
}

// graph is a time series panel.
func graph(title, description, unit string, sz size, qs ...query) *timeseries.PanelBuilder {
	return timeseries.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Unit(unit).
		Span(sz.w).Height(sz.h).
		Targets(targets(qs)).
		FillOpacity(10).
		ShowPoints(common.VisibilityModeNever).
		Legend(legendTable()).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeMulti).Sort(common.SortOrderDescending))
}

// bars is a time series panel drawn as bars: counts of events per interval.
func bars(title, description, unit string, sz size, qs ...query) *timeseries.PanelBuilder {
	return graph(title, description, unit, sz, qs...).
		DrawStyle(common.GraphDrawStyleBars).
		FillOpacity(80).
		Stacking(common.NewStackingConfigBuilder().Mode(common.StackingModeNormal))
}

// thresholds: green below the first step, then the given colours from each value on.
func thresholds(steps ...any) *dashboard.ThresholdsConfigBuilder {
	out := []dashboard.Threshold{{Color: "green"}}
	for i := 0; i+1 < len(steps); i += 2 {
		out = append(out, dashboard.Threshold{Value: cog.ToPtr(toFloat(steps[i])), Color: steps[i+1].(string)})
	}
	return dashboard.NewThresholdsConfigBuilder().Mode(dashboard.ThresholdsModeAbsolute).Steps(out)
}

func toFloat(v any) float64 {
	switch x := v.(type) {
	case int:
		return float64(x)
	case float64:
		return x
	}
	panic(fmt.Sprintf("threshold value %v: want int or float64", v))
}

// single is a stat panel showing one reduced value (the last one) per series.
func single(title, description, unit string, sz size, th *dashboard.ThresholdsConfigBuilder, qs ...query) *stat.PanelBuilder {
	return stat.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Unit(unit).
		Span(sz.w).Height(sz.h).
		Targets(targets(qs)).
		ReduceOptions(common.NewReduceDataOptionsBuilder().Calcs([]string{"lastNotNull"}).Values(false)).
		ColorMode(common.BigValueColorModeBackground).
		Orientation(common.VizOrientationAuto).
		GraphMode(common.BigValueGraphModeArea).
		Thresholds(th).
		ColorScheme(dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdThresholds))
}

// valueMap maps exact values to texts and colours: "1", "owned", "green", ...
func valueMap(triples ...string) []dashboard.ValueMapping {
	opts := map[string]dashboard.ValueMappingResult{}
	for i := 0; i+2 < len(triples); i += 3 {
		opts[triples[i]] = dashboard.ValueMappingResult{Text: cog.ToPtr(triples[i+1]), Color: cog.ToPtr(triples[i+2]), Index: cog.ToPtr(int32(i / 3))}
	}
	return []dashboard.ValueMapping{{ValueMap: &dashboard.ValueMap{Type: dashboard.MappingTypeValueToText, Options: opts}}}
}

// timeline is a state timeline: one row per series, coloured by value mappings.
func timeline(title, description string, sz size, mappings []dashboard.ValueMapping, qs ...query) *statetimeline.PanelBuilder {
	return statetimeline.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Unit(unitNone).
		Span(sz.w).Height(sz.h).
		Targets(targets(qs)).
		Mappings(mappings).
		ShowValue(common.VisibilityModeNever).
		MergeValues(true).
		RowHeight(0.8).
		FillOpacity(80).
		ColorScheme(dashboard.NewFieldColorBuilder().Mode(dashboard.FieldColorModeIdFixed).FixedColor("text")).
		Tooltip(common.NewVizTooltipOptionsBuilder().Mode(common.TooltipDisplayModeSingle).Sort(common.SortOrderNone)).
		Legend(common.NewVizLegendOptionsBuilder().ShowLegend(false).DisplayMode(common.LegendDisplayModeHidden).Placement(common.LegendPlacementBottom))
}

// column renames a table column and gives it a unit.
type column struct{ field, title, unit string }

// grid is a table merging instant queries on their shared labels.
func grid(title, description, unit string, sz size, hide []string, cols []column, qs ...query) *table.PanelBuilder {
	rename := map[string]string{}
	exclude := map[string]bool{"Time": true}
	for _, h := range hide {
		exclude[h] = true
	}
	b := table.NewPanelBuilder().
		Title(title).
		Description(description).
		Datasource(datasource()).
		Unit(unit).
		Span(sz.w).Height(sz.h).
		Targets(targets(qs)).
		Filterable(true).
		Footer(common.NewTableFooterOptionsBuilder().Show(false).Reducer([]string{"sum"}).CountRows(false)).
		WithTransformation(dashboard.DataTransformerConfig{Id: "merge", Options: map[string]any{}})
	for _, c := range cols {
		rename[c.field] = c.title
		if c.unit != "" {
			// Overrides apply after the transformations: match the renamed column.
			b.OverrideByName(c.title, []dashboard.DynamicConfigValue{{Id: "unit", Value: c.unit}})
		}
	}
	b.WithTransformation(dashboard.DataTransformerConfig{Id: "organize", Options: map[string]any{
		"excludeByName": exclude,
		"renameByName":  rename,
	}})
	return b
}

func row(title string) *dashboard.RowBuilder { return dashboard.NewRowBuilder(title) }
