package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/events/eventstest"
)

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, c := range []struct {
		given []time.Duration
		p     float64
		want  time.Duration
	}{
		{nil, 50, 0},
		{[]time.Duration{7}, 50, 7},
		{[]time.Duration{7}, 100, 7},
		{[]time.Duration{1, 2}, 50, 1},
		{[]time.Duration{1, 2}, 51, 2},
		{hundred, 50, 50 * time.Millisecond},
		{hundred, 95, 95 * time.Millisecond},
		{hundred, 99, 99 * time.Millisecond},
		{hundred, 99.5, 100 * time.Millisecond},
		{hundred, 100, 100 * time.Millisecond},
		{hundred, 0.1, 1 * time.Millisecond},
	} {
		if got := percentile(c.given, c.p); got != c.want {
			t.Errorf("percentile(%d samples, %v) = %v, want %v", len(c.given), c.p, got, c.want)
		}
	}
	// latencies sorts its samples itself.
	l := latencies([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond})
	if l != (latencyReport{P50: 2, P95: 3, P99: 3, Max: 3}) {
		t.Errorf("latencies = %+v", l)
	}
}

func TestParseProc(t *testing.T) {
	// The command name may hold spaces and parentheses; utime and stime are
	// fields 14 and 15.
	stat := "4242 (odd) (name) S 1 4242 4242 0 -1 4194560 2013 0 0 0 170 35 0 0 20 0 9 0 1234 1e9 5000\n"
	if got, err := parseStatCPU([]byte(stat)); err != nil || got != 205 {
		t.Errorf("parseStatCPU = %d, %v; want 205", got, err)
	}
	for _, bad := range []string{"", "4242 (x) S 1 2", "4242 (x) S 1 2 3 4 5 6 7 8 9 x 35"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q): no error", bad)
		}
	}
	status := "Name:\ttokend\nVmPeak:\t 1300000 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40000 kB\n"
	if got, err := parseStatusKB([]byte(status), "VmHWM:"); err != nil || got != 50<<20 {
		t.Errorf("VmHWM = %d, %v; want %d", got, err, 50<<20)
	}
	if got, err := parseStatusKB([]byte(status), "VmRSS:"); err != nil || got != 40000<<10 {
		t.Errorf("VmRSS = %d, %v; want %d", got, err, 40000<<10)
	}
	if _, err := parseStatusKB([]byte("Name:\tx\n"), "VmHWM:"); err == nil {
		t.Error("no VmHWM line: no error")
	}
	// This process, for real: the readers work on the running kernel.
	if _, err := os.Stat("/proc/self/stat"); err == nil {
		if _, err := procCPU(os.Getpid()); err != nil {
			t.Error(err)
		}
		if rss, err := procPeakRSS(os.Getpid()); err != nil || rss <= 0 {
			t.Errorf("procPeakRSS = %d, %v", rss, err)
		}
	}
}

func TestModuleRoot(t *testing.T) {
	if got := goModPath([]byte("// comment\nmodule \"github.com/tokend/tokend\"\n\ngo 1.26\n")); got != modulePath {
		t.Errorf("goModPath = %q", got)
	}
	if got := goModPath([]byte("modulex foo\n")); got != "" {
		t.Errorf("goModPath(modulex) = %q", got)
	}
	root, err := moduleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(root + "/cmd/tokend"); err != nil {
		t.Errorf("module root %s: %v", root, err)
	}
	other := t.TempDir()
	os.WriteFile(other+"/go.mod", []byte("module example.com/other\n"), 0o600)
	if _, err := moduleRoot(other); err == nil || !strings.Contains(err.Error(), "--tokend") {
		t.Errorf("moduleRoot outside the tree: %v", err)
	}
}

func TestSyncAlwaysIn(t *testing.T) {
	for _, c := range []struct {
		flags []string
		want  bool
	}{
		{nil, false},
		{[]string{"--sync-always"}, true},
		{[]string{"-sync-always"}, true},
		{[]string{"--sync-always=true"}, true},
		{[]string{"--sync-always=false"}, false},
		{[]string{"--sync-always", "--sync-always=0"}, false},
		{[]string{"--log-level=debug"}, false},
	} {
		if got := syncAlwaysIn(c.flags); got != c.want {
			t.Errorf("syncAlwaysIn(%q) = %v", c.flags, got)
		}
	}
}

// TestBaselineFlags: tokenbaseline gets --baseline-event-bytes, and
// --sync-always when tokend does.
func TestBaselineFlags(t *testing.T) {
	o := benchOptions{baselineEventBytes: 300}
	if got := o.baselineFlags(); !reflect.DeepEqual(got, []string{"--event-bytes", "300"}) {
		t.Errorf("baseline flags %q", got)
	}
	o.tokendFlags = []string{"--log-level=debug", "--sync-always"}
	if got := o.baselineFlags(); !reflect.DeepEqual(got, []string{"--event-bytes", "300", "--sync-always"}) {
		t.Errorf("baseline flags with --sync-always %q", got)
	}
}

func ptr[T any](v T) *T { return &v }

func TestBenchTable(t *testing.T) {
	baseline := runReport{Name: "baseline", Rotations: 40000, Seconds: 10, RotationsPerSecond: 4000,
		LatencyMs: latencyReport{P50: 0.5, P95: 1, P99: 2, Max: 9.5}, Errors: map[string]int64{},
		ServerCPUSeconds: ptr(8.0), ServerCPUPer1000: ptr(0.2), ServerPeakRSSBytes: ptr(int64(40 << 20)),
		BenchCPUSeconds: ptr(4.0), BenchCPUPer1000: ptr(0.1)}
	tokend := runReport{Name: "tokend", Rotations: 10000, Seconds: 10, RotationsPerSecond: 1000,
		LatencyMs:        latencyReport{P50: 1.5, P95: 3, P99: 5, Max: 120},
		Errors:           map[string]int64{"timeout": 2, "temporarily_unavailable": 1},
		ServerCPUSeconds: ptr(6.0), ServerCPUPer1000: ptr(0.6), ServerPeakRSSBytes: ptr(int64(100 << 20)),
		BenchCPUSeconds: ptr(1.0), BenchCPUPer1000: ptr(0.1), CatchUpSeconds: ptr(0.25)}
	rep := benchReport{K: 16, FamiliesPerWorker: 32, Connections: 8, BaselineEventBytes: 400, WarmupSeconds: 2, DurationSeconds: 10,
		TokendFlags: []string{"--sync-always"}, Runs: []runReport{baseline, tokend}, Ratios: ratios(tokend, baseline)}
	var out bytes.Buffer
	rep.writeTable(&out)
	want := `load: K=16 workers, 32 families each, rotated round-robin (512 families), 8 NATS connections, warmup 2s, measured 10s
tokend flags: --sync-always; baseline events: 400 bytes

                               baseline   tokend  tokend/baseline
rotations/s                        4000     1000             0.25
rotations                         40000    10000
latency p50 (ms)                  0.500    1.500             3.00
latency p95 (ms)                  1.000    3.000
latency p99 (ms)                  2.000    5.000             2.50
latency max (ms)                  9.500  120.000
errors                                0        3
  temporarily_unavailable             0        1
  timeout                             0        2
server CPU s / 1000 rotations     0.200    0.600             3.00
server CPU s                       8.00     6.00
server peak RSS (MiB)              40.0    100.0
bench CPU s / 1000 rotations      0.100    0.100
read model catch-up (s)               -    0.250
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}

	// One run against --target without --tokend-pid: no ratio column, no
	// server figures, and a failed catch-up says so.
	tokend.ServerCPUSeconds, tokend.ServerCPUPer1000, tokend.ServerPeakRSSBytes = nil, nil, nil
	tokend.CatchUpSeconds, tokend.CatchUpError = nil, "still behind"
	out.Reset()
	benchReport{K: 1, FamiliesPerWorker: 1, Connections: 1, WarmupSeconds: 0.5, DurationSeconds: 1, Runs: []runReport{tokend}}.writeTable(&out)
	for _, want := range []string{"load: K=1 worker, one family each, rotated back to back, 1 NATS connections, warmup 500ms, measured 1s\n",
		"tokend flags: none\n\n",
		"server CPU s / 1000 rotations        -\n", "server peak RSS (MiB)                -\n", "read model catch-up (s)         failed\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("single-run table lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "tokend/baseline") {
		t.Errorf("single-run table has a ratio column:\n%s", out.String())
	}

	// A zero baseline figure has no ratio; JSON cannot hold an infinity.
	r := ratios(tokend, runReport{Name: "baseline"})
	if r.Throughput != nil || r.P50 != nil || r.CPUPer1000 != nil {
		t.Errorf("ratios over a zero baseline: %+v", r)
	}
	if _, err := json.Marshal(benchReport{Runs: []runReport{tokend}, Ratios: r}); err != nil {
		t.Error(err)
	}
}

// TestBenchRoundsAlternateAndTakeMedians: with --rounds every other round
// runs the pair in reverse, and the reported ratio of each figure is the
// median over the rounds.
func TestBenchRoundsAlternateAndTakeMedians(t *testing.T) {
	o := benchOptions{baseline: true, order: "baseline,tokend", rounds: 4}
	want := [][]string{{"baseline", "tokend"}, {"tokend", "baseline"}, {"baseline", "tokend"}, {"tokend", "baseline"}}
	if got := o.roundRuns(); !reflect.DeepEqual(got, want) {
		t.Errorf("rounds %v, want %v", got, want)
	}
	if got := (&benchOptions{order: "baseline,tokend", rounds: 1}).roundRuns(); !reflect.DeepEqual(got, [][]string{{"tokend"}}) {
		t.Errorf("without --baseline: %v", got)
	}
	f := func(v float64) *float64 { return &v }
	rounds := []ratioReport{
		{Throughput: f(0.3), P50: f(2), P99: f(3), CPUPer1000: nil},
		{Throughput: f(0.5), P50: f(1), P99: f(5), CPUPer1000: f(3)},
		{Throughput: f(0.4), P50: f(4), P99: f(4), CPUPer1000: f(2)},
	}
	m := medianRatios(rounds)
	if *m.Throughput != 0.4 || *m.P50 != 2 || *m.P99 != 4 || *m.CPUPer1000 != 2.5 {
		t.Errorf("medians %v %v %v %v, want 0.4 2 4 2.5", *m.Throughput, *m.P50, *m.P99, *m.CPUPer1000)
	}
	if m := medianRatios([]ratioReport{{}}); m.Throughput != nil {
		t.Errorf("median of unknown figures: %v", *m.Throughput)
	}
}

func TestBenchUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-k", "0"},
		{"--families-per-worker", "0"},
		{"--baseline", "--baseline-event-bytes", "0"},
		{"--duration", "0s"},
		{"--warmup", "-1s"},
		{"--conns", "-1"},
		{"--order", "tokend"},
		{"--rounds", "0", "--baseline"},
		{"--rounds", "3"},
		{"--target", "--tokend", "/bin/true"},
		{"--target", "--tokend-flag=--sync-always"},
		{"--tokend-pid", "1"},
		{"--idle", "-1"},
		{"--idle", "10", "--baseline"},
		{"--idle", "10", "--target"},
		{"--instances", "-1"},
		{"--instances", "2", "--baseline"},
		{"--instances", "1", "--target"},
		{"--instances", "2", "--idle", "10"},
		{"--nats-server", "/bin/true"},
		{"--ssf-webhooks", "-1"},
		{"--ssf-webhooks", "2", "--target"},
		{"--ssf-webhooks", "2", "--idle", "10"},
		{"extra"},
		{"--timeout", "0"},
		{"--target", "--tls-cert", "c.pem"},
		{"--bogus"},
	} {
		r := runBench(t, append([]string{"--nats-url", deadURL}, args...)...)
		if r.code != 2 || r.stdout != "" || !strings.HasPrefix(r.stderr, "tokenbench: ") {
			t.Errorf("tokenbench %q: exit %d, stdout %q, stderr %q; want 2 and a message on stderr", args, r.code, r.stdout, r.stderr)
		}
	}
}

// TestBenchHelp: -h prints the usage with tokenctl bench's flags, GNU
// style, and the connection flags --target uses.
func TestBenchHelp(t *testing.T) {
	for _, args := range [][]string{{"-h"}, {"--help"}} {
		r := runBench(t, args...)
		if r.code != 0 || r.stderr != "" {
			t.Errorf("%q: exit %d, stderr %q", args, r.code, r.stderr)
		}
		for _, want := range []string{"Usage: tokenbench [-k N]", "ABBA", "--baseline\n", "--rounds N", "--instances N", "--idle N",
			"--tokend-flag FLAG", "--ssf-webhooks N", "--target\n", "--nats-url URL", "--prefix P", "--creds FILE", "--json\n", "(default \"16\")"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%q lacks %q:\n%s", args, want, r.stdout)
			}
		}
	}
}

type result struct {
	code           int
	stdout, stderr string
}

func runBench(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(t.Context(), args, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

// deadURL is a NATS URL nothing listens on: usage errors must not need NATS.
const deadURL = "nats://127.0.0.1:1"

// serveFake answers tokend's issue and refresh subjects on an in-process
// NATS server with the given handlers. It returns the server's URL and
// the refresh requests so far, decoded, oldest first.
func serveFake(t *testing.T, issue, refresh micro.HandlerFunc) (url string, refreshes func() []map[string]any) {
	t.Helper()
	var mu sync.Mutex
	var got []map[string]any
	record := func(r micro.Request) {
		var req map[string]any
		json.Unmarshal(r.Data(), &req)
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		refresh(r)
	}
	url = serveSubjects(t, map[string]micro.HandlerFunc{"tokens.cmd.issue": issue, "tokens.cmd.refresh": record})
	return url, func() []map[string]any {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// serveSubjects answers the given subjects on an in-process NATS server
// with their handlers, as tokend would, and returns the server's URL.
func serveSubjects(t *testing.T, handlers map[string]micro.HandlerFunc) string {
	t.Helper()
	url := eventstest.MustServer(t).ClientURL()
	nc := eventstest.MustConnect(t, url)
	svc, err := micro.AddService(nc, micro.Config{Name: "tokens", Version: "0.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	for subject, h := range handlers {
		if err := svc.AddEndpoint(strings.ReplaceAll(subject, ".", "_"), h, micro.WithEndpointSubject(subject)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return url
}

// refuse answers as tokend refuses a request: the contract body and the
// micro error headers.
func refuse(r micro.Request, status, code string) {
	r.Error(status, code, fmt.Appendf(nil, `{"error":%q,"error_description":"refused","retry_after_ms":1}`, code))
}

// TestBenchWorkerErrors runs the load against a fake tokend that fails some
// refreshes: a retryable failure is retried with the same token, a
// refused family is replaced by a new one when its turn comes, and both
// are counted by kind. A worker rotates its families round-robin.
func TestBenchWorkerErrors(t *testing.T) {
	for _, c := range []struct {
		name              string
		familiesPerWorker int
		// the first refreshes' tokens: the 2nd refresh answers
		// temporarily_unavailable, the 4th invalid_grant
		want []string
	}{
		{"one family", 1, []string{"fam1.1", "fam1.1+", "fam1.1+", "fam1.1++", "fam2.1", "fam2.1+"}},
		{"three families", 3, []string{"fam1.1", "fam2.1", "fam2.1", "fam3.1", "fam1.1+", "fam2.1+", "fam1.1++", "fam2.1++", "fam4.1", "fam1.1+++"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var issued, refreshes atomic.Int64
			url, requests := serveFake(t,
				func(r micro.Request) {
					n := issued.Add(1)
					r.Respond(fmt.Appendf(nil, `{"refresh_token":"fam%d.1","family_id":"fam%d","seq":1}`, n, n))
				},
				func(r micro.Request) {
					var req struct {
						RefreshToken string `json:"refresh_token"`
					}
					json.Unmarshal(r.Data(), &req)
					switch n := refreshes.Add(1); n {
					case 2:
						refuse(r, "503", "temporarily_unavailable")
					case 4:
						refuse(r, "400", "invalid_grant")
					default:
						r.Respond(fmt.Appendf(nil, `{"refresh_token":"%s+","seq":%d}`, req.RefreshToken, n+100))
					}
				})
			rep, err := runLoad(t.Context(), loadTarget{name: "tokend", url: url, prefix: "tokens"},
				loadConfig{k: 1, familiesPerWorker: c.familiesPerWorker, conns: 1, duration: time.Second, timeout: 5 * time.Second, ticks: 100})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Errors["temporarily_unavailable"] != 1 || rep.Errors["invalid_grant"] != 1 || len(rep.Errors) != 2 {
				t.Errorf("errors %v; want one temporarily_unavailable and one invalid_grant", rep.Errors)
			}
			got := requests()
			if len(got) < len(c.want) {
				t.Fatalf("only %d refreshes in 1 s", len(got))
			}
			for i, w := range c.want {
				if got[i]["refresh_token"] != w || got[i]["client_id"] != benchClientID || got[i]["family_id"] != nil {
					t.Errorf("refresh %d: %v, want token %s from %s without family_id", i+1, got[i], w, benchClientID)
				}
			}
			if n := issued.Load(); n != int64(c.familiesPerWorker)+1 {
				t.Errorf("%d families issued, want %d and one in place of the refused", n, c.familiesPerWorker)
			}
			// The last success may come after the window: not counted, but
			// its seq is the one the read model must reach.
			if ok := refreshes.Load() - 2; int64(rep.Rotations) < ok-1 || int64(rep.Rotations) > ok || rep.LastSeq != uint64(refreshes.Load())+100 {
				t.Errorf("rotations %d, last seq %d after %d refreshes, 2 failed", rep.Rotations, rep.LastSeq, refreshes.Load())
			}
		})
	}
}

// TestBenchWorkersIssueTheirFamilies: each of K workers issues its own
// families, waiting when the issue rate limit says so, and rotates only
// those.
func TestBenchWorkersIssueTheirFamilies(t *testing.T) {
	var asked, issued atomic.Int64
	url, requests := serveFake(t,
		func(r micro.Request) {
			if asked.Add(1)%5 == 0 {
				refuse(r, "503", "temporarily_unavailable")
				return
			}
			n := issued.Add(1)
			r.Respond(fmt.Appendf(nil, `{"refresh_token":"fam%d","family_id":"fam%d","seq":1}`, n, n))
		},
		func(r micro.Request) {
			var req struct {
				RefreshToken string `json:"refresh_token"`
			}
			json.Unmarshal(r.Data(), &req)
			r.Respond(fmt.Appendf(nil, `{"refresh_token":"%s","seq":2}`, req.RefreshToken))
		})
	const k, perWorker = 3, 4
	if _, err := runLoad(t.Context(), loadTarget{name: "tokend", url: url, prefix: "tokens"},
		loadConfig{k: k, familiesPerWorker: perWorker, conns: 2, duration: 200 * time.Millisecond, timeout: 5 * time.Second, ticks: 100}); err != nil {
		t.Fatal(err)
	}
	if n, a := issued.Load(), asked.Load(); n != k*perWorker || a < n+2 {
		t.Fatalf("%d families issued in %d requests, want %d and at least 2 refused", n, a, k*perWorker)
	}
	// Each family is rotated in turn with the others of its worker, so
	// after the first round every family has been rotated.
	rotated := map[any]int{}
	for _, req := range requests() {
		rotated[req["refresh_token"]]++
	}
	if len(rotated) != k*perWorker {
		t.Errorf("rotated %d families, want all %d: %v", len(rotated), k*perWorker, rotated)
	}
}

// TestBenchEndToEnd builds tokend and tokenbaseline, runs a short load
// against each and checks the report's shape; it asserts no timing.
func TestBenchEndToEnd(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where bench makes and must remove its directories
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--baseline", "-k", "2", "--families-per-worker", "3", "--baseline-event-bytes", "300",
		"--duration", "1s", "--warmup", "200ms", "--json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr is not a terminal, yet bench wrote to it: %q", errOut.String())
	}
	var rep benchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Name != "baseline" || rep.Runs[1].Name != "tokend" ||
		rep.K != 2 || rep.FamiliesPerWorker != 3 || rep.BaselineEventBytes != 300 {
		t.Fatalf("runs: %s", out.String())
	}
	// No errors: tokend's refresh rate limit is off, though its families
	// are rotated far more often than it allows.
	for _, r := range rep.Runs {
		if r.Rotations == 0 || len(r.Errors) != 0 || r.LatencyMs.P50 <= 0 || r.LatencyMs.Max < r.LatencyMs.P99 ||
			r.ServerCPUPer1000 == nil || r.ServerPeakRSSBytes == nil || r.LastSeq <= 6 {
			t.Errorf("%s run: %+v", r.Name, r)
		}
	}
	if rep.Runs[0].CatchUpSeconds != nil || rep.Runs[1].CatchUpSeconds == nil || rep.Runs[1].CatchUpError != "" {
		t.Errorf("catch-up: baseline %v, tokend %v %q; want only tokend's", rep.Runs[0].CatchUpSeconds,
			rep.Runs[1].CatchUpSeconds, rep.Runs[1].CatchUpError)
	}
	if r := rep.Ratios; r == nil || r.Throughput == nil || r.P50 == nil || r.P99 == nil || r.CPUPer1000 == nil {
		t.Errorf("ratios: %s", out.String())
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("bench left %v in its temporary directory", left)
	}
}

// TestBenchIdle issues families into a started tokend and reads its memory.
func TestBenchIdle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--idle", "300", "-k", "4", "--duration", "200ms", "--json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	var rep idleReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.Families != 300 || rep.Errors != 0 || rep.RSSBytes <= 0 || rep.PeakRSSBytes < rep.RSSBytes || rep.IssuesPerSecond <= 0 {
		t.Fatalf("report %+v", rep)
	}
}

// TestNATSServerConfig: the standalone server's configuration is one
// nats-server accepts, with JetStream on file storage under explicit
// limits, and fsyncs every write only with tokend's --sync-always.
func TestNATSServerConfig(t *testing.T) {
	for _, syncAlways := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "nats-server.conf")
		store := filepath.Join(dir, "js store")
		if err := os.WriteFile(path, []byte(natsServerConfig("127.0.0.1:14222", "127.0.0.1:18222", store, syncAlways)), 0o600); err != nil {
			t.Fatal(err)
		}
		opts, err := server.ProcessConfigFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if opts.Host != "127.0.0.1" || opts.Port != 14222 || opts.HTTPHost != "127.0.0.1" || opts.HTTPPort != 18222 ||
			!opts.JetStream || opts.StoreDir != store || opts.JetStreamMaxMemory != 256<<20 || opts.JetStreamMaxStore != 10<<30 ||
			opts.SyncAlways != syncAlways {
			t.Errorf("sync always %v: host %s port %d, monitor %s:%d, jetstream %v in %q, limits %d/%d, sync always %v", syncAlways,
				opts.Host, opts.Port, opts.HTTPHost, opts.HTTPPort, opts.JetStream, opts.StoreDir, opts.JetStreamMaxMemory, opts.JetStreamMaxStore, opts.SyncAlways)
		}
	}
}

const testMetrics = `# HELP tokend_events_appended_total Events this instance stored in the stream, by type.
# TYPE tokend_events_appended_total counter
tokend_events_appended_total{type="token.issued"} 12
tokend_events_appended_total{type="token.rotated"} 1.234567e+06
# HELP tokend_projection_applied_sequence Last stream sequence applied to the read model.
# TYPE tokend_projection_applied_sequence gauge
tokend_projection_applied_sequence 4711
# TYPE tokend_command_duration_seconds histogram
tokend_command_duration_seconds_bucket{command="refresh",le="+Inf"} 3
tokend_command_duration_seconds_sum{command="refresh"} 0.5
tokend_command_duration_seconds_count{command="refresh"} 3
`

func TestMetricValue(t *testing.T) {
	for _, c := range []struct {
		name    string
		labels  map[string]string
		want    float64
		wantErr string
	}{
		{"tokend_events_appended_total", map[string]string{"type": "token.rotated"}, 1234567, ""},
		{"tokend_events_appended_total", map[string]string{"type": "token.issued"}, 12, ""},
		{"tokend_projection_applied_sequence", nil, 4711, ""},
		{"tokend_events_appended_total", map[string]string{"type": "family.revoked"}, 0, "no sample"},
		{"tokend_events_appended_total", map[string]string{"kind": "token.rotated"}, 0, "no sample"},
		{"tokend_stream_bytes", nil, 0, "no metric"},
		{"tokend_command_duration_seconds", nil, 0, "not a number"},
	} {
		got, err := metricValue(strings.NewReader(testMetrics), c.name, c.labels)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s %v: %v, %v; want an error with %q", c.name, c.labels, got, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s %v = %v, %v; want %v", c.name, c.labels, got, err, c.want)
		}
	}
	if _, err := metricValue(strings.NewReader("not { a metrics page\n"), "x", nil); err == nil {
		t.Error("garbage page: no error")
	}
}

// auditServer serves a tokend's /v1/audit that answers a query for
// min_seq 100 once caughtUp says so, and temporarily_unavailable before,
// as tokend does after holding the query.
func auditServer(t *testing.T, caughtUp func() bool) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		switch {
		case r.URL.Path != "/v1/audit" || q.Get("min_seq") != "100" || q.Get("limit") != "1":
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_request","error_description":"%s"}`, r.URL)
		case !caughtUp():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"error":"temporarily_unavailable","error_description":"read model has not reached min_seq yet, retry","retry_after_ms":200}`)
		default:
			fmt.Fprint(w, `{"events":[]}`)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestAddInstances: with --instances the server figures break down by
// process; each instance's share of the rotations, the tokend's CPU
// together, and each instance's catch-up, read from its own /metrics.
func TestAddInstances(t *testing.T) {
	var asked atomic.Int64
	// The second instance's read model reaches the last seq only when it
	// is asked the fourth time: catch-up waits for each instance.
	lagging := auditServer(t, func() bool { return asked.Add(1) >= 4 })
	current := auditServer(t, func() bool { return true })
	targets := []targetProc{{name: "tokend-1", ops: current}, {name: "tokend-2", ops: lagging}, {name: "nats-server"}}
	procs := []processReport{{Name: "tokend-1", CPUSeconds: ptr(1.0)}, {Name: "tokend-2", CPUSeconds: ptr(3.0)}, {Name: "nats-server", CPUSeconds: ptr(2.0)}}
	rotated := []rotatedCount{{n: 300}, {n: 100}, {}}
	r := runReport{Rotations: 400, LastSeq: 100}
	r.addInstances(t.Context(), targets, procs, rotated, time.Now(), 5*time.Second)
	if r.TokendCPUSeconds == nil || *r.TokendCPUSeconds != 4 || r.TokendCPUPer1000 == nil || *r.TokendCPUPer1000 != 10 {
		t.Errorf("tokend CPU %v, per 1000 %v; want 4 and 10", r.TokendCPUSeconds, r.TokendCPUPer1000)
	}
	for i, want := range []struct {
		rotations int64
		share     float64
		per1000   float64
	}{{300, 0.75, 2.5}, {100, 0.25, 7.5}, {0, 0, 5}} {
		p := r.Processes[i]
		if p.CPUPer1000 == nil || *p.CPUPer1000 != want.per1000 || p.Error != "" || p.CatchUpError != "" {
			t.Errorf("%s: %+v; want CPU per 1000 %v and no error", p.Name, p, want.per1000)
		}
		if p.Name == "nats-server" {
			if p.Rotations != nil || p.Share != nil || p.CatchUpSeconds != nil {
				t.Errorf("nats-server has tokend figures: %+v", p)
			}
			continue
		}
		if p.Rotations == nil || *p.Rotations != want.rotations || p.Share == nil || *p.Share != want.share || p.CatchUpSeconds == nil {
			t.Errorf("%s: %+v; want %d rotations, share %v and a catch-up", p.Name, p, want.rotations, want.share)
		}
	}
	if n := asked.Load(); n != 4 {
		t.Errorf("the lagging instance was asked %d times, want 4: until it answered", n)
	}
	if c0, c1 := r.Processes[0].CatchUpSeconds, r.Processes[1].CatchUpSeconds; c0 != nil && c1 != nil &&
		(r.CatchUpSeconds == nil || *r.CatchUpSeconds != max(*c0, *c1)) {
		t.Errorf("catch-up %v: want the slowest instance's of %v and %v", r.CatchUpSeconds, *c0, *c1)
	}

	// An instance that rotated nothing, one whose counters could not be
	// read, and one without an audit API are each reported; unknown CPU
	// makes the sums unknown.
	broken := httptest.NewServer(http.NotFoundHandler())
	defer broken.Close()
	targets = []targetProc{{name: "tokend-1", ops: current}, {name: "tokend-2", ops: current}, {name: "tokend-3", ops: broken.URL}}
	procs = []processReport{{Name: "tokend-1", CPUSeconds: ptr(1.0)}, {Name: "tokend-2"}, {Name: "tokend-3", CPUSeconds: ptr(1.0)}}
	rotated = []rotatedCount{{n: 0}, {err: errors.New("connection refused")}, {n: 50}}
	r = runReport{Rotations: 50, LastSeq: 100}
	r.addInstances(t.Context(), targets, procs, rotated, time.Now(), 5*time.Second)
	p := r.Processes
	if !strings.Contains(p[0].Error, "no rotation") || !strings.Contains(p[1].Error, "connection refused") || p[2].Error != "" {
		t.Errorf("errors %q, %q, %q", p[0].Error, p[1].Error, p[2].Error)
	}
	if p[0].Share == nil || *p[0].Share != 0 || p[1].Share != nil || p[2].Share == nil || *p[2].Share != 1 {
		t.Errorf("shares %v %v %v; want 0, unknown, 1", p[0].Share, p[1].Share, p[2].Share)
	}
	if r.TokendCPUSeconds != nil || p[1].CPUPer1000 != nil {
		t.Errorf("unknown CPU added up: %v, %v", r.TokendCPUSeconds, p[1].CPUPer1000)
	}
	if p[0].CatchUpSeconds == nil || !strings.Contains(p[2].CatchUpError, "404") || r.CatchUpSeconds != nil ||
		!strings.Contains(r.CatchUpError, "tokend-3: read model did not catch up") {
		t.Errorf("catch-up: %v %q; report %v %q", p[0].CatchUpSeconds, p[2].CatchUpError, r.CatchUpSeconds, r.CatchUpError)
	}
}

func TestSumOf(t *testing.T) {
	figure := func(v *float64) *float64 { return v }
	if s := sumOf([]*float64{ptr(1.5), ptr(2.0)}, figure); s == nil || *s != 3.5 {
		t.Errorf("sum %v", s)
	}
	if s := sumOf([]*float64{ptr(1.5), nil}, figure); s != nil {
		t.Errorf("sum with an unknown: %v", *s)
	}
	if s := sumOf([]*float64{}, figure); s != nil {
		t.Errorf("sum of nothing: %v", *s)
	}
	if m := ptrMax(ptr(1.0), ptr(2.0)); *m != 2 {
		t.Errorf("max %v", *m)
	}
	if m := ptrMax(ptr(3.0), nil); *m != 3 {
		t.Errorf("max with nil %v", *m)
	}
	if m := ptrMax(nil, ptr(3.0)); *m != 3 {
		t.Errorf("max with nil %v", *m)
	}
}

// TestBenchInstancesTable: with --instances the report says so, its
// server figures are the processes' sums, and a second table breaks them
// down.
func TestBenchInstancesTable(t *testing.T) {
	run := runReport{Name: "tokend", Rotations: 20000, Seconds: 10, RotationsPerSecond: 2000,
		LatencyMs: latencyReport{P50: 2, P95: 4, P99: 8, Max: 20}, Errors: map[string]int64{},
		ServerCPUSeconds: ptr(8.0), ServerCPUPer1000: ptr(0.4), ServerPeakRSSBytes: ptr(int64(300 << 20)),
		BenchCPUSeconds: ptr(2.0), BenchCPUPer1000: ptr(0.1), CatchUpSeconds: ptr(0.3),
		TokendCPUSeconds: ptr(6.0), TokendCPUPer1000: ptr(0.3),
		Processes: []processReport{
			{Name: "tokend-1", CPUSeconds: ptr(3.5), CPUPer1000: ptr(0.175), PeakRSSBytes: ptr(int64(100 << 20)), Rotations: ptr(int64(11000)), Share: ptr(0.55), CatchUpSeconds: ptr(0.3)},
			{Name: "tokend-2", CPUSeconds: ptr(2.5), CPUPer1000: ptr(0.125), PeakRSSBytes: ptr(int64(120 << 20)), Rotations: ptr(int64(9000)), Share: ptr(0.45), CatchUpSeconds: ptr(0.2)},
			{Name: "nats-server", CPUSeconds: ptr(2.0), CPUPer1000: ptr(0.1), PeakRSSBytes: ptr(int64(80 << 20))},
		}}
	var out bytes.Buffer
	benchReport{K: 16, FamiliesPerWorker: 32, Connections: 8, WarmupSeconds: 2, DurationSeconds: 10, Instances: 2, Runs: []runReport{run}}.writeTable(&out)
	want := `load: K=16 workers, 32 families each, rotated round-robin (512 families), 8 NATS connections, warmup 2s, measured 10s
tokend flags: none
servers: 2 tokend instances on one standalone nats-server; server figures are all processes together

                               tokend
rotations/s                      2000
rotations                       20000
latency p50 (ms)                2.000
latency p95 (ms)                4.000
latency p99 (ms)                8.000
latency max (ms)               20.000
errors                              0
server CPU s / 1000 rotations   0.400
server CPU s                     8.00
server peak RSS (MiB)           300.0
bench CPU s / 1000 rotations    0.100
read model catch-up (s)         0.300

by process   rotations  share  CPU s / 1000 rotations  CPU s  peak RSS (MiB)  read model catch-up (s)
tokend-1         11000    55%                   0.175   3.50           100.0                    0.300
tokend-2          9000    45%                   0.125   2.50           120.0                    0.200
tokend, all      20000   100%                   0.300   6.00           220.0                    0.300
nats-server          -      -                   0.100   2.00            80.0                        -
`
	if out.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", out.String(), want)
	}

	// One instance; an instance's catch-up failed.
	run.Processes = []processReport{
		{Name: "tokend-1", CPUSeconds: ptr(6.0), CPUPer1000: ptr(0.3), PeakRSSBytes: ptr(int64(100 << 20)), Rotations: ptr(int64(20000)), Share: ptr(1.0), CatchUpError: "still behind"},
		run.Processes[2],
	}
	run.CatchUpSeconds, run.CatchUpError = nil, "tokend-1: still behind"
	out.Reset()
	benchReport{K: 16, FamiliesPerWorker: 32, Connections: 8, WarmupSeconds: 2, DurationSeconds: 10, Instances: 1, Runs: []runReport{run}}.writeTable(&out)
	for _, want := range []string{"servers: 1 tokend instance on one standalone nats-server;",
		"tokend-1         20000   100%                   0.300   6.00           100.0                   failed\n",
		"tokend, all      20000   100%                   0.300   6.00           100.0                   failed\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("one-instance table lacks %q:\n%s", want, out.String())
		}
	}
}

// TestBenchInstances builds tokend and nats-server, runs a short load on
// two instances and checks that both served it, that every figure is
// there and adds up, and that both read models caught up; it asserts no
// timing.
func TestBenchInstances(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where bench makes and must remove its directories
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--instances", "2", "-k", "2", "--families-per-worker", "4", "--duration", "1s", "--warmup", "0", "--json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	var rep benchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if rep.Instances != 2 || len(rep.Runs) != 1 {
		t.Fatalf("report: %s", out.String())
	}
	r := rep.Runs[0]
	if r.Rotations == 0 || len(r.Errors) != 0 || r.CatchUpSeconds == nil || r.ServerCPUSeconds == nil || r.TokendCPUSeconds == nil ||
		r.ServerPeakRSSBytes == nil || len(r.Processes) != 3 {
		t.Fatalf("run: %s", out.String())
	}
	var cpu float64
	var rss, rotations int64
	for i, name := range []string{"tokend-1", "tokend-2", "nats-server"} {
		p := r.Processes[i]
		if p.Name != name || p.CPUSeconds == nil || p.PeakRSSBytes == nil || p.Error != "" || p.CatchUpError != "" {
			t.Errorf("process %d: %+v, want %s with CPU and RSS", i, p, name)
			continue
		}
		cpu += *p.CPUSeconds
		rss += *p.PeakRSSBytes
		if name != "nats-server" {
			if p.Rotations == nil || *p.Rotations == 0 || p.CatchUpSeconds == nil {
				t.Errorf("%s served no rotation or has no catch-up: %+v", name, p)
				continue
			}
			rotations += *p.Rotations
		}
	}
	if math.Abs(cpu-*r.ServerCPUSeconds) > 1e-9 || rss != *r.ServerPeakRSSBytes {
		t.Errorf("server CPU %v and RSS %d are not the processes' sums %v and %d", *r.ServerCPUSeconds, *r.ServerPeakRSSBytes, cpu, rss)
	}
	// The instances' counters are read just after the window starts and
	// just after it ends, so they miss its first moments and may count the
	// K requests in flight at its end, which the load does not.
	if rotations > int64(r.Rotations)+2 {
		t.Errorf("instances appended %d rotations in the window, the load counted only %d", rotations, r.Rotations)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("bench left %v in its temporary directory", left)
	}
}

// TestBenchSSFTable: a run with webhooks adds their rows, "-" in a run
// without (the baseline's), and a failed catch-up says so; a report
// without webhooks has none of them (the tables above).
func TestBenchSSFTable(t *testing.T) {
	baseline := runReport{Name: "baseline", Rotations: 40000, Seconds: 10, RotationsPerSecond: 4000, Errors: map[string]int64{}}
	tokend := runReport{Name: "tokend", Rotations: 10000, Seconds: 10, RotationsPerSecond: 1000, Errors: map[string]int64{},
		CatchUpSeconds: ptr(0.25), SSFWebhooks: 4, SSFCatchUpSeconds: ptr(1.5), SSFRequests: ptr(int64(12))}
	var out bytes.Buffer
	benchReport{K: 16, FamiliesPerWorker: 32, Connections: 8, WarmupSeconds: 2, DurationSeconds: 10,
		Runs: []runReport{baseline, tokend}, Ratios: ratios(tokend, baseline)}.writeTable(&out)
	want := `read model catch-up (s)               -   0.250
SSF webhooks                          -       4
SSF delivery catch-up (s)             -   1.500
SSF webhook requests                  -      12
`
	if !strings.HasSuffix(out.String(), want) {
		t.Errorf("table:\n%s\nwant it to end with:\n%s", out.String(), want)
	}

	tokend.SSFCatchUpSeconds, tokend.SSFCatchUpError = nil, "still behind"
	out.Reset()
	benchReport{K: 16, FamiliesPerWorker: 32, Connections: 8, WarmupSeconds: 2, DurationSeconds: 10, Runs: []runReport{tokend}}.writeTable(&out)
	if !strings.Contains(out.String(), "SSF delivery catch-up (s)      failed\n") {
		t.Errorf("failed SSF catch-up:\n%s", out.String())
	}
}

// TestSSFSink: the webhooks' sink accepts every POST with 204 and counts
// it, and nothing else.
func TestSSFSink(t *testing.T) {
	sink, err := startSSFSink()
	if err != nil {
		t.Fatal(err)
	}
	defer sink.close()
	if !strings.HasPrefix(sink.url, "http://127.0.0.1:") {
		t.Errorf("sink at %s, want a loopback http URL", sink.url)
	}
	for range 3 {
		resp, err := http.Post(sink.url, "application/json", strings.NewReader(`{"type":"session-revoked"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Errorf("POST: %s, want 204", resp.Status)
		}
	}
	resp, err := http.Get(sink.url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %s, want 405", resp.Status)
	}
	if n := sink.requests.Load(); n != 3 {
		t.Errorf("sink counted %d requests, want the 3 POSTs", n)
	}
}

// TestAddSSFWebhooks: each webhook is added with the admin request, to
// the sink, for every event of every client, with a fresh Standard
// Webhooks secret; a refusal fails the run with tokend's error.
func TestAddSSFWebhooks(t *testing.T) {
	var mu sync.Mutex
	var got []map[string]any
	url := serveSubjects(t, map[string]micro.HandlerFunc{"tokens.admin.ssf.webhooks.add": func(r micro.Request) {
		var req map[string]any
		json.Unmarshal(r.Data(), &req)
		mu.Lock()
		got = append(got, req)
		n := len(got)
		mu.Unlock()
		if n == 4 {
			refuse(r, "400", "invalid_request")
			return
		}
		r.Respond(fmt.Appendf(nil, `{"stream_id":"wh%d","delivery_method":"urn:tokend:webhook"}`, n))
	}})
	target := loadTarget{name: "tokend", url: url, prefix: "tokens"}
	w, err := addSSFWebhooks(t.Context(), target, 2, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer w.sink.close()
	if !reflect.DeepEqual(w.ids, []string{"wh1", "wh2"}) {
		t.Errorf("webhooks %v, want wh1 and wh2", w.ids)
	}
	secrets := map[any]bool{}
	for i, req := range got {
		secret, _ := req["secret"].(string)
		raw, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		if !strings.HasPrefix(secret, "whsec_") || err != nil || len(raw) != 32 {
			t.Errorf("request %d: secret is not whsec_ and the base64 of 32 bytes", i+1)
		}
		secrets[secret] = true
		delete(req, "secret")
		if want := map[string]any{"endpoint_url": w.sink.url, "by": "tokenbench"}; !reflect.DeepEqual(req, want) {
			t.Errorf("request %d: %v, want %v and a secret", i+1, req, want)
		}
	}
	if len(secrets) != 2 {
		t.Errorf("the webhooks share a secret")
	}

	if _, err := addSSFWebhooks(t.Context(), target, 2, 5*time.Second); err == nil ||
		!strings.Contains(err.Error(), "add SSF webhook 2 of 2") || !strings.Contains(err.Error(), "invalid_request") {
		t.Errorf("refused add: %v, want tokend's invalid_request for webhook 2 of 2", err)
	}
}

// TestSSFCatchUp: the webhooks' backlog is asked of tokend until every
// stream has nothing pending (one that has is not asked again); an
// unknown backlog or a busy tokend is asked again, a refusal ends the
// wait, and so does the limit.
func TestSSFCatchUp(t *testing.T) {
	var mu sync.Mutex
	asked := map[string]int{}
	url := serveSubjects(t, map[string]micro.HandlerFunc{"tokens.admin.ssf.streams.get": func(r micro.Request) {
		var req struct {
			StreamID string `json:"stream_id"`
		}
		json.Unmarshal(r.Data(), &req)
		mu.Lock()
		asked[req.StreamID]++
		n := asked[req.StreamID]
		mu.Unlock()
		switch {
		case req.StreamID == "gone":
			refuse(r, "404", "not_found")
		case req.StreamID == "stuck":
			r.Respond([]byte(`{"stream_id":"stuck","pending":{"events":7,"oldest_seconds":3}}`))
		case req.StreamID == "draining" && n < 3: // 2 pending, then 1, then none
			r.Respond(fmt.Appendf(nil, `{"stream_id":"draining","pending":{"events":%d,"oldest_seconds":1}}`, 3-n))
		case req.StreamID == "new" && n == 1: // no consumer yet: no backlog known
			r.Respond([]byte(`{"stream_id":"new"}`))
		case req.StreamID == "busy" && n == 1:
			refuse(r, "503", "temporarily_unavailable")
		default:
			r.Respond(fmt.Appendf(nil, `{"stream_id":%q,"pending":{"events":0,"oldest_seconds":0}}`, req.StreamID))
		}
	}})
	c := client.New(eventstest.MustConnect(t, url), "tokens")
	since := time.Now()
	took, err := ssfCatchUp(t.Context(), c, []string{"draining", "new", "busy", "idle"}, 5*time.Second, since, time.Minute)
	if err != nil || took <= 0 {
		t.Fatalf("catch-up %v, %v", took, err)
	}
	if want := map[string]int{"draining": 3, "new": 2, "busy": 2, "idle": 1}; !reflect.DeepEqual(asked, want) {
		t.Errorf("asked %v, want %v: each until it had nothing pending", asked, want)
	}

	if _, err := ssfCatchUp(t.Context(), c, []string{"idle", "stuck"}, 5*time.Second, time.Now(), 200*time.Millisecond); err == nil ||
		!strings.Contains(err.Error(), "1 of 2 webhooks still behind") || !strings.Contains(err.Error(), "stuck: 7 events pending") {
		t.Errorf("a stream that never catches up: %v", err)
	}
	if _, err := ssfCatchUp(t.Context(), c, []string{"gone"}, 5*time.Second, time.Now(), time.Minute); err == nil ||
		!strings.Contains(err.Error(), "stream gone") || !errors.Is(err, client.ErrNotFound) {
		t.Errorf("a refused question: %v, want not_found for stream gone", err)
	}
}

// TestBenchSSFWebhooks builds tokend and runs a short load while two
// webhooks deliver every event: both are set up, and their delivery,
// which reads every rotation, has nothing pending after the load. The
// load makes no security event, so the sink's count is only reported;
// TestSSFSink checks that it counts. It asserts no timing.
func TestBenchSSFWebhooks(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where bench makes and must remove its directories
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, []string{"--ssf-webhooks", "2", "-k", "2", "--families-per-worker", "2", "--duration", "1s", "--warmup", "0", "--json"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
	}
	var rep benchReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(rep.Runs) != 1 {
		t.Fatalf("report: %s", out.String())
	}
	r := rep.Runs[0]
	if r.Rotations == 0 || len(r.Errors) != 0 || r.CatchUpSeconds == nil {
		t.Errorf("run: %s", out.String())
	}
	if r.SSFWebhooks != 2 || r.SSFCatchUpSeconds == nil || r.SSFCatchUpError != "" || r.SSFRequests == nil {
		t.Errorf("SSF figures: webhooks %d, catch-up %v %q, requests %v; want 2 webhooks caught up and a count",
			r.SSFWebhooks, r.SSFCatchUpSeconds, r.SSFCatchUpError, r.SSFRequests)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("bench left %v in its temporary directory", left)
	}
}
