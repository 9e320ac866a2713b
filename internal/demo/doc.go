// Package demo draws a qslice failover for a newcomer, from Prometheus' data: which node owned
// each slice over time, the alerts, and the backlog of every slice (an SVG picture).
//
// The parts are pure: OwnershipSegments and AlertSpans turn range query results into runs of
// steps, RenderSVG draws a Chart (deterministic output, compared with a golden file), ParseSVG
// reads a picture back and counts the series drawn.
package demo
