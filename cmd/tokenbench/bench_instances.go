package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tokend/tokend/client"
)

// The standalone nats-server's JetStream limits are those tokend gives its
// embedded server by default (--js-max-memory, --js-max-store): without
// limits JetStream claims 75% of the machine's memory and disk.
const (
	benchJSMaxMemory = 256 << 20
	benchJSMaxStore  = 10 << 30
)

// natsServerConfig is the standalone nats-server's configuration: clients
// on listen, monitoring (its /healthz) on monitor, JetStream with file
// storage in storeDir and explicit limits. syncAlways is tokend's
// --sync-always, which with --nats-url only the server can honour.
func natsServerConfig(listen, monitor, storeDir string, syncAlways bool) string {
	sync := ""
	if syncAlways {
		sync = "\n  sync_interval: always"
	}
	return fmt.Sprintf(`# written by tokenbench --instances
server_name: tokenbench
listen: %s
http: %s
jetstream {
  store_dir: %s
  max_memory_store: %d
  max_file_store: %d%s
}
`, strconv.Quote(listen), strconv.Quote(monitor), strconv.Quote(storeDir), benchJSMaxMemory, benchJSMaxStore, sync)
}

// startInstances starts a standalone nats-server and then, one after the
// other (the first creates the stream and the key bucket the others find),
// n tokend connected to it with --nats-url, each with its own data
// directory, read model and HTTP address. It returns them in the order to
// stop them: the tokend first, which flush to the server on the way out.
func startInstances(ctx context.Context, o *benchOptions, bins map[string]string, prefix string) ([]*serverProc, error) {
	ns, err := newServerProc("nats-server")
	if err != nil {
		return nil, err
	}
	addr, err := freeLoopbackAddr()
	if err != nil {
		os.RemoveAll(ns.dir)
		return nil, err
	}
	ns.natsURL = "nats://" + addr
	conf := filepath.Join(ns.dir, "nats-server.conf")
	if err := os.WriteFile(conf, []byte(natsServerConfig(addr, ns.httpAddr, filepath.Join(ns.dir, "jetstream"), syncAlwaysIn(o.tokendFlags))), 0o600); err != nil {
		os.RemoveAll(ns.dir)
		return nil, err
	}
	// /healthz answers 200 once JetStream is up.
	if err := ns.start(ctx, bins["nats-server"], []string{"--config", conf}, nil, "/healthz"); err != nil {
		return nil, err
	}
	var procs []*serverProc
	for i := range o.instances {
		s, err := newServerProc(fmt.Sprintf("tokend-%d", i+1))
		if err == nil {
			s.natsURL = ns.natsURL
			// --v1-open-audit: the audit API on the loopback --http too, to
			// ask each instance's read model for the last rotation.
			args := append([]string{"--data-dir", filepath.Join(s.dir, "data"), "--nats-url", ns.natsURL, "--http", s.httpAddr,
				"--v1-open-audit", "--subject-prefix", prefix}, o.tokendFlags...)
			err = s.start(ctx, bins["tokend"], args, tokendBenchEnv, "/readyz")
		}
		if err != nil {
			for _, p := range append(procs, ns) {
				err = errors.Join(err, p.stop(false))
			}
			return nil, err
		}
		procs = append(procs, s)
	}
	return append(procs, ns), nil
}

// instancesTarget is the load's target with --instances: tokend's
// subjects on the standalone server, whose queue group spreads the
// requests over the instances; procs as startInstances returns them.
func instancesTarget(procs []*serverProc, prefix string) loadTarget {
	t := loadTarget{name: "tokend", url: procs[len(procs)-1].natsURL, prefix: prefix}
	for _, p := range procs {
		tp := targetProc{name: p.name, pid: p.pid()}
		if p.name != "nats-server" {
			tp.ops = "http://" + p.httpAddr
		}
		t.procs = append(t.procs, tp)
	}
	return t
}

// processReport is one process of a server made of several (--instances):
// its CPU in the window, also per 1,000 rotations of the whole load (so
// the processes' figures add up to the server's), its peak RSS, and for a
// tokend the rotations it appended and its read model's catch-up.
type processReport struct {
	Name         string   `json:"name"`
	CPUSeconds   *float64 `json:"cpu_s,omitempty"`
	CPUPer1000   *float64 `json:"cpu_s_per_1000,omitempty"`
	PeakRSSBytes *int64   `json:"peak_rss_bytes,omitempty"`
	// Rotations are the token.rotated events the instance appended in the
	// window (its tokend_events_appended_total), Share its part of all
	// instances' rotations.
	Rotations      *int64   `json:"rotations,omitempty"`
	Share          *float64 `json:"share,omitempty"`
	CatchUpSeconds *float64 `json:"catch_up_s,omitempty"`
	CatchUpError   string   `json:"catch_up_error,omitempty"`
	// Error says why the instance's rotations are unknown, or that it
	// served none: then the load did not reach every instance.
	Error string `json:"error,omitempty"`
}

// rotatedCount is how many rotations a tokend had appended, by its
// /metrics; err if they could not be read.
type rotatedCount struct {
	n   float64
	err error
}

// scrapeRotated reads the rotation counter of each tokend instance, all at
// once; the other processes' entries stay zero.
func (l *loadRun) scrapeRotated(ctx context.Context) []rotatedCount {
	counts := make([]rotatedCount, len(l.t.procs))
	var wg sync.WaitGroup
	for i, p := range l.t.procs {
		if p.ops == "" {
			continue
		}
		wg.Go(func() {
			counts[i].n, counts[i].err = scrapeMetric(ctx, p.ops+"/metrics", l.cfg.timeout,
				"tokend_events_appended_total", map[string]string{"type": "token.rotated"})
		})
	}
	wg.Wait()
	return counts
}

// rotatedIn is what each counter grew by between the two scrapes.
func rotatedIn(before, after []rotatedCount) []rotatedCount {
	diff := make([]rotatedCount, len(before))
	for i := range before {
		diff[i] = rotatedCount{n: after[i].n - before[i].n, err: errors.Join(before[i].err, after[i].err)}
	}
	return diff
}

// addInstances fills in the report's breakdown by process: procs holds
// each target process's CPU and RSS, rotated what the tokend among them
// appended in the window. The tokend's CPU is added up, each instance's
// share of the rotations computed, and each instance's read model asked
// until it has applied the last rotation (every instance keeps its own):
// the report's catch-up is the slowest instance's.
func (r *runReport) addInstances(ctx context.Context, targets []targetProc, procs []processReport, rotated []rotatedCount, since time.Time, timeout time.Duration) {
	var tokendCPU []*float64
	var all int64
	for i, t := range targets {
		procs[i].CPUPer1000 = per1000(procs[i].CPUSeconds, r.Rotations)
		if t.ops == "" {
			continue
		}
		tokendCPU = append(tokendCPU, procs[i].CPUSeconds)
		if err := rotated[i].err; err != nil {
			procs[i].Error = fmt.Sprintf("rotations unknown: %v", err)
			continue
		}
		n := int64(rotated[i].n)
		procs[i].Rotations = &n
		all += n
		if n == 0 {
			procs[i].Error = "appended no rotation in the window: the load did not reach it"
		}
	}
	for i := range procs {
		if procs[i].Rotations != nil && all > 0 {
			share := float64(*procs[i].Rotations) / float64(all)
			procs[i].Share = &share
		}
	}
	r.TokendCPUSeconds = sumOf(tokendCPU, func(v *float64) *float64 { return v })
	r.TokendCPUPer1000 = per1000(r.TokendCPUSeconds, r.Rotations)
	r.Processes = procs
	if r.LastSeq == 0 {
		return
	}
	var wg sync.WaitGroup
	for i, t := range targets {
		if t.ops == "" {
			continue
		}
		wg.Go(func() {
			took, err := catchUp(ctx, auditOverHTTP(t.ops, r.LastSeq), timeout, since)
			if err != nil {
				procs[i].CatchUpError = fmt.Sprintf("read model did not catch up with seq %d: %v", r.LastSeq, err)
				return
			}
			s := took.Seconds()
			procs[i].CatchUpSeconds = &s
		})
	}
	wg.Wait()
	var errs []error
	for _, p := range procs {
		switch {
		case p.CatchUpError != "":
			errs = append(errs, fmt.Errorf("%s: %s", p.Name, p.CatchUpError))
		case p.CatchUpSeconds != nil:
			r.CatchUpSeconds = ptrMax(r.CatchUpSeconds, p.CatchUpSeconds)
		}
	}
	if len(errs) > 0 {
		r.CatchUpSeconds, r.CatchUpError = nil, errors.Join(errs...).Error()
	}
}

// auditOverHTTP asks one tokend's read model, on its /v1/audit, for the
// event at min_seq seq: for catchUp, which reads a refusal as
// client.Error like one over NATS.
func auditOverHTTP(ops string, seq uint64) func(context.Context) error {
	url := ops + "/v1/audit?limit=1&min_seq=" + strconv.FormatUint(seq, 10)
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		var body struct {
			Error        string `json:"error"`
			Description  string `json:"error_description"`
			RetryAfterMs int64  `json:"retry_after_ms"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil || body.Error == "" {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return &client.Error{Code: body.Error, Description: body.Description, RetryAfterMs: body.RetryAfterMs, Status: strconv.Itoa(resp.StatusCode)}
	}
}

// scrapeMetric fetches a /metrics page and returns the value of the sample
// of metric name that has the given labels.
func scrapeMetric(ctx context.Context, url string, timeout time.Duration, name string, labels map[string]string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("%s: %s", url, resp.Status)
	}
	v, err := metricValue(resp.Body, name, labels)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", url, err)
	}
	return v, nil
}

// metricValue returns the value of the counter, gauge or untyped sample of
// metric name whose labels include labels, from a page in Prometheus's
// text format.
func metricValue(page io.Reader, name string, labels map[string]string) (float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(page)
	if err != nil {
		return 0, err
	}
	f, ok := families[name]
	if !ok {
		return 0, fmt.Errorf("no metric %s", name)
	}
	for _, m := range f.GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), nil
		case m.Gauge != nil:
			return m.Gauge.GetValue(), nil
		case m.Untyped != nil:
			return m.Untyped.GetValue(), nil
		}
		return 0, fmt.Errorf("%s is a %s, not a number", name, f.GetType())
	}
	return 0, fmt.Errorf("no sample of %s with labels %v", name, labels)
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

// sumOf adds up a figure of each item; nil (unknown) if any is unknown or
// there are none.
func sumOf[T any, N int64 | float64](items []T, figure func(T) *N) *N {
	if len(items) == 0 {
		return nil
	}
	var total N
	for _, it := range items {
		v := figure(it)
		if v == nil {
			return nil
		}
		total += *v
	}
	return &total
}

// ptrMax is the larger of two figures, either possibly unknown.
func ptrMax[N cmp.Ordered](a, b *N) *N {
	if a == nil || b != nil && *b > *a {
		return b
	}
	return a
}
