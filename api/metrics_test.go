package api

import (
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestVersionLineNamesTheRevisionWhenKnown(t *testing.T) {
	for _, c := range []struct{ revision, want string }{
		{"4795e9f74cd018b27a780e40f4e57080035a683e", "tokend " + Version + " go1.26.8 revision 4795e9f74cd018b27a780e40f4e57080035a683e"},
		{"", "tokend " + Version + " go1.26.8"},
	} {
		if got := versionLine("tokend", "go1.26.8", c.revision); got != c.want {
			t.Errorf("versionLine(revision %q) = %q, want %q", c.revision, got, c.want)
		}
	}
}

// The SSF series are a stream's: its status is one of three, and a
// deleted stream's series go.
func TestSSFMetricsPerStream(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	m.SSFStatus("s1", "paused")
	m.SSFLag("s1", 3, 90*time.Second)
	m.SSFDelivered("s1", 2)
	m.SSFStatus("s2", "enabled")
	series := func(stream string) map[string]float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, f := range families {
			for _, metric := range f.GetMetric() {
				labels := map[string]string{}
				for _, l := range metric.GetLabel() {
					labels[l.GetName()] = l.GetValue()
				}
				if labels["stream"] != stream {
					continue
				}
				name := f.GetName()
				if s := labels["status"]; s != "" {
					name += "{" + s + "}"
				}
				out[name] = metric.GetGauge().GetValue() + metric.GetCounter().GetValue()
			}
		}
		return out
	}
	want := map[string]float64{
		"tokend_ssf_stream_status{enabled}": 0, "tokend_ssf_stream_status{paused}": 1, "tokend_ssf_stream_status{disabled}": 0,
		"tokend_ssf_lag_events": 3, "tokend_ssf_lag_seconds": 90,
		"tokend_ssf_sets_delivered_total": 2, "tokend_ssf_sets_failed_total": 0, "tokend_ssf_delivery_retries_total": 0,
	}
	if got := series("s1"); !maps.Equal(got, want) {
		t.Errorf("s1: %v, want %v", got, want)
	}
	m.SSFForget("s1")
	if got := series("s1"); len(got) != 0 {
		t.Errorf("a deleted stream's series remain: %v", got)
	}
	if got := series("s2"); got["tokend_ssf_stream_status{enabled}"] != 1 {
		t.Errorf("s2: %v", got)
	}
}

// TestDPoPSeriesStartAtZero: the series of a key mismatch and of the two
// DPoP reasons exist before the first one, so the dashboard and the
// alert on them see a rate from the start.
func TestDPoPSeriesStartAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, f := range families {
		for _, metric := range f.GetMetric() {
			for _, l := range metric.GetLabel() {
				found[f.GetName()+"{"+l.GetValue()+"}"] = true
			}
		}
	}
	for _, want := range []string{"tokend_events_appended_total{token.key_mismatch}",
		"tokend_families_revoked_total{dpop_key_mismatch}", "tokend_refresh_rejected_total{dpop_proof_missing}"} {
		if !found[want] {
			t.Errorf("no series %s before the first event", want)
		}
	}
}
