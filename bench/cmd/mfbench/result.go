package main

import (
	"encoding/json"
)

// metric names one figure of a scenario for the report.
type metric struct {
	Key    string `json:"key"`
	Label  string `json:"label"`
	Unit   string `json:"unit"`
	Digits int    `json:"-"`
}

// scenarioResult is one scenario: the figures of every run and their
// medians and ranges.
type scenarioResult struct {
	Key     string               `json:"key"`
	Title   string               `json:"title"`
	Metrics []metric             `json:"metrics"`
	Runs    []map[string]float64 `json:"runs"`
	Summary map[string]summary   `json:"summary"`
	Notes   []string             `json:"notes,omitempty"`
	Error   string               `json:"error,omitempty"`
}

func newScenario(key, title string, metrics ...metric) *scenarioResult {
	return &scenarioResult{Key: key, Title: title, Metrics: metrics, Summary: map[string]summary{}}
}

func (r *scenarioResult) add(run map[string]float64) { r.Runs = append(r.Runs, run) }

func (r *scenarioResult) note(s string) {
	for _, n := range r.Notes {
		if n == s {
			return
		}
	}
	r.Notes = append(r.Notes, s)
}

// finish computes the summaries over the runs.
func (r *scenarioResult) finish() {
	for _, m := range r.Metrics {
		var xs []float64
		for _, run := range r.Runs {
			if v, ok := run[m.Key]; ok {
				xs = append(xs, v)
			}
		}
		r.Summary[m.Key] = summarize(xs)
	}
}

func (r *scenarioResult) median(key string) float64 { return r.Summary[key].Median }

func (r *scenarioResult) has(key string) bool { return len(r.Summary[key].Runs) > 0 }

// target is one goal of issue 7 checked against a median.
type target struct {
	Name  string  `json:"name"`
	Want  string  `json:"want"`
	Got   string  `json:"got"`
	Value float64 `json:"value"`
	Met   bool    `json:"met"`
	By    string  `json:"by"` // how far over or under
}

// machine describes where the numbers came from.
type machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	MemoryMiB int64  `json:"memory_mib"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Redis     string `json:"redis"`
	Postgres  string `json:"postgres"`
	Mailferry string `json:"mailferry"`
	Baseline  string `json:"baseline,omitempty"`
	// Durable: PostgreSQL ran with fsync and synchronous_commit on.
	Durable bool `json:"durable"`
}

// report is the JSON file.
type report struct {
	Started    string             `json:"started"`
	Seconds    float64            `json:"seconds"`
	Machine    machine            `json:"machine"`
	Flags      []string           `json:"flags"`
	Scenarios  []*scenarioResult  `json:"scenarios"`
	Targets    []target           `json:"targets"`
	Profiles   []string           `json:"profiles,omitempty"`
	Breakdowns []profileBreakdown `json:"profile_breakdowns,omitempty"`
}

func (r *report) scenario(key string) *scenarioResult {
	for _, s := range r.Scenarios {
		if s.Key == key {
			return s
		}
	}
	return nil
}

func (r *report) json() ([]byte, error) { return json.MarshalIndent(r, "", "  ") }
