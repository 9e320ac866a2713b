package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
)

// The demo's queries. Ownership joins the node name onto each node's qslice_slice_owned (one
// series per node and slice, present while the node owns the slice); the backlog is the shipped
// recording rule (every node reports the same backlog, deduplicated with max).
const (
	queryOwnership = `max by (node, slice) (qslice_slice_owned{job="qslice", queue="in"} * on (job, instance) group_left (node) qslice_node_info{job="qslice"}) == 1`
	queryBacklog   = `job_queue_slice:qslice_queue_ready_messages:max{job="qslice", queue="in"}`
	queryAlerts    = `ALERTS`
)

// promClient reads the demo's series from Prometheus' HTTP API (/api/v1/query_range and
// /api/v1/query; the JSON of their results decodes into prometheus/common/model's types).
type promClient struct {
	base string // http://host:port
}

// apiResponse is the envelope of Prometheus' query API answers.
type apiResponse struct {
	Status string `json:"status"`
	Error  string `json:"error"`
	Data   struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	} `json:"data"`
}

func (p *promClient) get(ctx context.Context, path string, params url.Values, want string, result any) error {
	var r apiResponse
	if err := getJSON(ctx, p.base+path+"?"+params.Encode(), &r); err != nil && r.Error == "" {
		return err
	}
	if r.Status != "success" {
		return fmt.Errorf("prometheus: %s", r.Error)
	}
	if r.Data.ResultType != want {
		return fmt.Errorf("prometheus: got a %s, want a %s", r.Data.ResultType, want)
	}
	return json.Unmarshal(r.Data.Result, result)
}

func promTime(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64)
}

// rangeQuery runs query over w and returns its series.
func (p *promClient) rangeQuery(ctx context.Context, query string, w Window) ([]Series, error) {
	var m model.Matrix
	params := url.Values{"query": {query}, "start": {promTime(w.Start)}, "end": {promTime(w.End)},
		"step": {strconv.FormatFloat(w.Step.Seconds(), 'f', -1, 64)}}
	if err := p.get(ctx, "/api/v1/query_range", params, "matrix", &m); err != nil {
		return nil, fmt.Errorf("query_range %s: %w", query, err)
	}
	out := make([]Series, 0, len(m))
	for _, ss := range m {
		se := Series{Labels: map[string]string{}}
		for k, v := range ss.Metric {
			se.Labels[string(k)] = string(v)
		}
		for _, pt := range ss.Values {
			se.Points = append(se.Points, Point{T: pt.Timestamp.Time(), V: float64(pt.Value)})
		}
		out = append(out, se)
	}
	return out, nil
}

// count runs query now and returns how many series it gave.
func (p *promClient) count(ctx context.Context, query string) (int, error) {
	var v model.Vector
	if err := p.get(ctx, "/api/v1/query", url.Values{"query": {query}}, "vector", &v); err != nil {
		return 0, fmt.Errorf("query %s: %w", query, err)
	}
	return len(v), nil
}

// getJSON GETs url and decodes its JSON body into v.
func getJSON(ctx context.Context, u string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		_ = json.Unmarshal(body, v) // an API error's envelope, for the caller
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return json.Unmarshal(body, v)
}
