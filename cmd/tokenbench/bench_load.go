package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/client"
)

// benchClientID owns every family bench issues. It kept its name when the
// bench left tokenctl, so a client registry that admits it for --target
// still does.
const benchClientID = "tokenctl-bench"

// catchUpLimit bounds the wait for tokend's read model after the load.
const catchUpLimit = time.Minute

// longPoll is how long tokend holds a query whose min_seq its read model
// has not reached before answering temporarily_unavailable.
const longPoll = 2 * time.Second

// loadTarget is what one load runs against: tokend, or the baseline, which
// answers the same subjects under its own prefix.
type loadTarget struct {
	name   string // "tokend" or "baseline"
	url    string
	prefix string
	opts   []nats.Option // how to log in
	// procs are the server's processes, whose CPU and RSS are the server's
	// figures; none when unknown (--target without --tokend-pid).
	procs []targetProc
	// familyInBody: the baseline reads the family from family_id; tokend
	// reads it from the token and refuses unknown fields.
	familyInBody bool
	// readModel: measure how long the read model takes to catch up, with
	// the audit query (each process with ops is measured there instead).
	readModel bool
	// ssf are the webhooks tokend delivers to during the load
	// (--ssf-webhooks), nil for none: their catch-up is measured too.
	ssf *ssfWebhooks
}

// targetProc is one process of the server under load.
type targetProc struct {
	name string
	pid  int
	// ops is the HTTP address (http://host:port) of a tokend started with
	// --instances: the rotations it appended are read on its /metrics, and
	// its read model is asked on its /v1/audit, since the load cannot
	// choose which instance answers a NATS request.
	ops string
}

// loadConfig is the shape of the load, the same for every target.
type loadConfig struct {
	k, conns          int // workers, NATS connections
	familiesPerWorker int
	warmup, duration  time.Duration
	timeout           time.Duration // per request
	ticks             float64       // clock ticks per second of /proc/<pid>/stat
	progress          io.Writer     // where the progress line goes; nil for none
}

// runReport is one target's result; CPU and RSS are absent where /proc
// could not be read (no pid, not Linux).
type runReport struct {
	Name               string           `json:"name"`
	Rotations          int              `json:"rotations"`
	Seconds            float64          `json:"seconds"`
	RotationsPerSecond float64          `json:"rotations_per_s"`
	LatencyMs          latencyReport    `json:"latency_ms"`
	Errors             map[string]int64 `json:"errors"` // by kind, warmup included
	LastSeq            uint64           `json:"last_seq"`
	ServerCPUSeconds   *float64         `json:"server_cpu_s,omitempty"`
	ServerCPUPer1000   *float64         `json:"server_cpu_s_per_1000,omitempty"`
	ServerPeakRSSBytes *int64           `json:"server_peak_rss_bytes,omitempty"`
	BenchCPUSeconds    *float64         `json:"bench_cpu_s,omitempty"`
	BenchCPUPer1000    *float64         `json:"bench_cpu_s_per_1000,omitempty"`
	CatchUpSeconds     *float64         `json:"catch_up_s,omitempty"`
	CatchUpError       string           `json:"catch_up_error,omitempty"`
	// With --instances the server is several processes: the server figures
	// above are their sums (catch-up: the slowest instance's), and these
	// break them down.
	TokendCPUSeconds *float64        `json:"tokend_cpu_s,omitempty"` // all instances together
	TokendCPUPer1000 *float64        `json:"tokend_cpu_s_per_1000,omitempty"`
	Processes        []processReport `json:"processes,omitempty"`
	// With --ssf-webhooks: the webhooks tokend delivered to during the
	// run, how long after the load their delivery had nothing pending,
	// and the requests their sink got (security events only: a rotation
	// makes none).
	SSFWebhooks       int      `json:"ssf_webhooks,omitempty"`
	SSFCatchUpSeconds *float64 `json:"ssf_catch_up_s,omitempty"`
	SSFCatchUpError   string   `json:"ssf_catch_up_error,omitempty"`
	SSFRequests       *int64   `json:"ssf_requests,omitempty"`
}

type latencyReport struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, 0 if it is empty. Every sample is kept (a 10 s run yields at most
// a few hundred thousand), so no histogram rounds the tail.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func latencies(samples []time.Duration) latencyReport {
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return latencyReport{P50: ms(percentile(samples, 50)), P95: ms(percentile(samples, 95)),
		P99: ms(percentile(samples, 99)), Max: ms(percentile(samples, 100))}
}

// errorKind names a failed request for the report: the contract error code
// tokend answered, or "timeout", or "transport" (no responders, a closed
// connection).
func errorKind(err error) string {
	var se *client.Error
	switch {
	case errors.As(err, &se):
		return se.Code
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return "timeout"
	}
	return "transport"
}

// benchFamily is a worker's family and its current token; no token means
// the family died and the worker issues a new one in its place.
type benchFamily struct {
	id, token string
}

type benchReply struct {
	RefreshToken string `json:"refresh_token"`
	FamilyID     string `json:"family_id"`
	Seq          uint64 `json:"seq"`
}

// loadRun is one load in progress.
type loadRun struct {
	t          loadTarget
	cfg        loadConfig
	start, end time.Time // the measured window

	// For the progress line: rotations and errors so far, warmup included.
	rotations, errs atomic.Int64
}

// workerResult is what one worker saw; runLoad merges them once all have
// stopped, so workers share nothing while they run.
type workerResult struct {
	samples []time.Duration // latencies of the rotations completed in the window
	errors  map[string]int64
	lastSeq uint64
}

// runLoad has each of cfg.k workers issue cfg.familiesPerWorker families
// and rotate them round-robin as fast as the target answers, for the
// warmup and then the measured window, and reports the window.
func runLoad(ctx context.Context, t loadTarget, cfg loadConfig) (runReport, error) {
	// A small pool rather than a connection per worker: a service shares
	// one connection among its goroutines, so a pool stands for a few client
	// instances. It keeps nats.go's write coalescing as a real client has it
	// and spares the shared cores 64 read loops in each process at K=64,
	// which would measure the load generator. Both runs of a comparison use
	// the same pool.
	conns := make([]*client.Client, cfg.conns)
	for i := range conns {
		nc, err := nats.Connect(t.url, slices.Concat(t.opts, []nats.Option{nats.Name("tokenbench"), nats.Timeout(cfg.timeout), nats.NoReconnect()})...)
		if err != nil {
			return runReport{}, fmt.Errorf("%s: connect to %s: %w", t.name, t.url, err)
		}
		defer nc.Close()
		conns[i] = client.New(nc, t.prefix)
	}
	l := &loadRun{t: t, cfg: cfg}
	// Issued by the workers in parallel: thousands of families one after
	// the other would take longer than the load. A tokend that limits
	// issues per client (--target) answers temporarily_unavailable: wait as
	// it says and go on.
	families := make([][]benchFamily, cfg.k)
	issueErrs := make([]error, cfg.k)
	var issuing sync.WaitGroup
	for w := range families {
		issuing.Go(func() {
			for len(families[w]) < cfg.familiesPerWorker {
				f, err := l.issue(ctx, conns[w%len(conns)])
				var se *client.Error
				switch {
				case err == nil:
					families[w] = append(families[w], f)
				case errors.As(err, &se) && se.Code == client.CodeTemporarilyUnavailable && ctx.Err() == nil:
					sleep(ctx, retryDelay(se))
				default:
					issueErrs[w] = fmt.Errorf("%s: worker %d: issue family %d of %d: %w", t.name, w+1, len(families[w])+1, cfg.familiesPerWorker, err)
					return
				}
			}
		})
	}
	issuing.Wait()
	if err := errors.Join(issueErrs...); err != nil {
		return runReport{}, err
	}

	began := time.Now()
	l.start = began.Add(cfg.warmup)
	l.end = l.start.Add(cfg.duration)
	results := make([]workerResult, cfg.k)
	var wg sync.WaitGroup
	for i := range families {
		wg.Go(func() { results[i] = l.worker(ctx, conns[i%len(conns)], families[i]) })
	}
	stopped := make(chan struct{})
	go func() { wg.Wait(); close(stopped) }()
	// The line is erased before runLoad returns, so it never mixes with
	// the report.
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		if cfg.progress != nil {
			l.showProgress(began, stopped)
		}
	}()
	use, cpuErr := l.measureWindow(ctx)
	<-stopped
	loadStopped := time.Now()
	<-progressDone
	if err := ctx.Err(); err != nil {
		return runReport{}, err
	}
	// Alongside the read model's catch-up, both timed from the load's end.
	ssfDone := make(chan ssfResult, 1)
	if t.ssf != nil {
		go func() { ssfDone <- t.ssf.catchUp(ctx, conns[0], cfg.timeout, loadStopped) }()
	}

	rep := runReport{Name: t.name, Seconds: cfg.duration.Seconds(), Errors: map[string]int64{}}
	var samples []time.Duration
	for _, r := range results {
		samples = append(samples, r.samples...)
		for kind, n := range r.errors {
			rep.Errors[kind] += n
		}
		rep.LastSeq = max(rep.LastSeq, r.lastSeq)
	}
	rep.Rotations = len(samples)
	rep.RotationsPerSecond = float64(len(samples)) / cfg.duration.Seconds()
	rep.LatencyMs = latencies(samples)
	procs := make([]processReport, len(t.procs))
	for i, p := range t.procs {
		procs[i].Name = p.name
		if cpuErr == nil {
			procs[i].CPUSeconds = &use.procs[i]
		}
		if rss, err := procPeakRSS(p.pid); err == nil {
			procs[i].PeakRSSBytes = &rss
		}
	}
	if cpuErr == nil {
		rep.BenchCPUSeconds = use.bench
		rep.BenchCPUPer1000 = per1000(use.bench, rep.Rotations)
	}
	if len(t.procs) > 0 {
		rep.ServerCPUSeconds = sumOf(procs, func(p processReport) *float64 { return p.CPUSeconds })
		rep.ServerCPUPer1000 = per1000(rep.ServerCPUSeconds, rep.Rotations)
		rep.ServerPeakRSSBytes = sumOf(procs, func(p processReport) *int64 { return p.PeakRSSBytes })
	}
	if len(t.procs) > 1 {
		rep.addInstances(ctx, t.procs, procs, use.rotated, loadStopped, cfg.timeout)
	}
	if t.readModel && rep.LastSeq > 0 {
		body := []byte(`{"limit":1,"min_seq":` + strconv.FormatUint(rep.LastSeq, 10) + `}`)
		ask := func(ctx context.Context) error { return conns[0].Request(ctx, client.SubjectAudit, body, nil) }
		took, err := catchUp(ctx, ask, cfg.timeout, loadStopped)
		if err != nil {
			rep.CatchUpError = fmt.Sprintf("read model did not catch up with seq %d: %v", rep.LastSeq, err)
		} else {
			s := took.Seconds()
			rep.CatchUpSeconds = &s
		}
	}
	if t.ssf != nil {
		r := <-ssfDone
		rep.SSFWebhooks, rep.SSFRequests = len(t.ssf.ids), &r.requests
		if r.err != nil {
			rep.SSFCatchUpError = fmt.Sprintf("SSF delivery did not catch up: %v", r.err)
		} else {
			s := r.catchUp.Seconds()
			rep.SSFCatchUpSeconds = &s
		}
	}
	return rep, nil
}

func per1000(seconds *float64, rotations int) *float64 {
	if seconds == nil || rotations == 0 {
		return nil
	}
	v := *seconds / float64(rotations) * 1000
	return &v
}

// worker rotates its families round-robin until the window ends: each
// success's token is its family's next request's. A retryable failure
// (temporarily_unavailable, server_error, a timeout, a transport error) is
// retried after a pause with the same token, before the worker goes on to
// the next family; inside the reuse interval that returns the same child.
// Any other failure means the family is dead, and the worker issues a new
// one in its place when its turn comes, as a client would sign its user in
// again.
func (l *loadRun) worker(ctx context.Context, c *client.Client, families []benchFamily) workerResult {
	r := workerResult{errors: map[string]int64{}}
	for i := 0; ; {
		begin := time.Now()
		if !begin.Before(l.end) || ctx.Err() != nil {
			return r
		}
		f := &families[i]
		issuing := f.token == ""
		var (
			next benchFamily
			seq  uint64
			err  error
		)
		if issuing {
			next, err = l.issue(ctx, c)
		} else {
			next, seq, err = l.refresh(ctx, c, *f)
		}
		done := time.Now()
		switch {
		case ctx.Err() != nil: // interrupted: no failure of the target
			return r
		case err != nil:
			r.errors[errorKind(err)]++
			l.errs.Add(1)
			sleep(ctx, backoff(err))
			if client.Transient(err) {
				continue
			}
			f.token = ""
		case issuing:
			*f = next
		default:
			*f = next
			r.lastSeq = max(r.lastSeq, seq)
			l.rotations.Add(1)
			if !done.Before(l.start) && done.Before(l.end) {
				r.samples = append(r.samples, done.Sub(begin))
			}
		}
		i = (i + 1) % len(families)
	}
}

// backoff is the pause before retrying after err: the server's hint for
// temporarily_unavailable, else a tenth of a second, so that a failing
// target is not hammered.
func backoff(err error) time.Duration {
	var se *client.Error
	if errors.As(err, &se) {
		return retryDelay(se)
	}
	return 100 * time.Millisecond
}

// retryDelay is the wait after temporarily_unavailable: tokend's hint,
// bounded so as neither to hammer it nor to stall.
func retryDelay(se *client.Error) time.Duration {
	return min(max(se.RetryAfter(), 100*time.Millisecond), 5*time.Second)
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

func (l *loadRun) issue(ctx context.Context, c *client.Client) (benchFamily, error) {
	body, _ := json.Marshal(map[string]string{"subject": "bench-user", "client_id": benchClientID})
	var r benchReply
	if err := l.request(ctx, c, client.SubjectIssue, body, &r); err != nil {
		return benchFamily{}, err
	}
	return benchFamily{id: r.FamilyID, token: r.RefreshToken}, nil
}

func (l *loadRun) refresh(ctx context.Context, c *client.Client, f benchFamily) (benchFamily, uint64, error) {
	req := struct {
		FamilyID     string `json:"family_id,omitempty"`
		RefreshToken string `json:"refresh_token"`
		ClientID     string `json:"client_id"`
	}{RefreshToken: f.token, ClientID: benchClientID}
	if l.t.familyInBody {
		req.FamilyID = f.id
	}
	body, _ := json.Marshal(req)
	var r benchReply
	if err := l.request(ctx, c, client.SubjectRefresh, body, &r); err != nil {
		return f, 0, err
	}
	return benchFamily{id: f.id, token: r.RefreshToken}, r.Seq, nil
}

func (l *loadRun) request(ctx context.Context, c *client.Client, subject string, body []byte, reply *benchReply) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.timeout)
	defer cancel()
	if err := c.Request(ctx, subject, body, reply); err != nil {
		return err
	}
	if reply.RefreshToken == "" {
		return fmt.Errorf("%s: reply without refresh_token", c.Subject(subject))
	}
	return nil
}

// windowUse is what the server's processes and this one did in the
// measured window.
type windowUse struct {
	bench *float64  // this process's CPU seconds
	procs []float64 // the CPU seconds of each of the target's processes
	// rotated holds, for each tokend instance, the rotations it appended
	// (by its counters at both ends of the window).
	rotated []rotatedCount
}

// measureWindow reads the CPU times of the server's processes and of this
// one at the start and at the end of the window, as without instances,
// and then each time the rotation counters of the tokend instances.
func (l *loadRun) measureWindow(ctx context.Context) (windowUse, error) {
	read := func() (procs []uint64, bench uint64, err error) {
		if bench, err = procCPU(os.Getpid()); err != nil {
			return nil, 0, err
		}
		procs = make([]uint64, len(l.t.procs))
		for i, p := range l.t.procs {
			if procs[i], err = procCPU(p.pid); err != nil {
				return nil, 0, err
			}
		}
		return procs, bench, nil
	}
	// Workers stop before the window ends only when ctx is done.
	waitUntil := func(t time.Time) error {
		select {
		case <-time.After(time.Until(t)):
		case <-ctx.Done():
		}
		return ctx.Err()
	}
	if err := waitUntil(l.start); err != nil {
		return windowUse{}, err
	}
	p0, b0, cpuErr := read()
	before := l.scrapeRotated(ctx)
	if err := waitUntil(l.end); err != nil {
		return windowUse{}, err
	}
	p1, b1, err := read()
	use := windowUse{rotated: rotatedIn(before, l.scrapeRotated(ctx))}
	if cpuErr = errors.Join(cpuErr, err); cpuErr != nil {
		return use, cpuErr
	}
	seconds := func(ticks uint64) float64 { return float64(ticks) / l.cfg.ticks }
	bench := seconds(b1 - b0)
	use.bench = &bench
	for i := range p0 {
		use.procs = append(use.procs, seconds(p1[i]-p0[i]))
	}
	return use, nil
}

// catchUp asks tokend's audit query for a min_seq until it answers: each
// request waits up to 2 s for the read model (and makes the projector
// apply what it has at once, as any read-your-writes query does), then
// answers temporarily_unavailable. It returns the time from since to the
// answer.
func catchUp(ctx context.Context, ask func(context.Context) error, timeout time.Duration, since time.Time) (time.Duration, error) {
	for {
		asked := time.Now()
		rctx, cancel := context.WithTimeout(ctx, timeout+longPoll)
		err := ask(rctx)
		cancel()
		answered := time.Now()
		var se *client.Error
		switch {
		case err == nil:
			return answered.Sub(since), nil
		case !errors.As(err, &se) || se.Code != client.CodeTemporarilyUnavailable:
			return 0, err
		case answered.Sub(since) > catchUpLimit:
			return 0, fmt.Errorf("still behind after %v: %w", catchUpLimit, err)
		case answered.Sub(asked) < longPoll/2:
			// Refused without waiting (overloaded?): do not spin.
			sleep(ctx, 50*time.Millisecond)
		}
	}
}

// showProgress redraws one line on the terminal once a second until
// stopped, then erases it.
func (l *loadRun) showProgress(began time.Time, stopped <-chan struct{}) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	w := l.cfg.progress
	var prev int64
	for {
		select {
		case <-stopped:
			fmt.Fprint(w, "\r\x1b[K")
			return
		case now := <-tick.C:
			phase := "measuring"
			if now.Before(l.start) {
				phase = "warmup"
			}
			done := l.rotations.Load()
			fmt.Fprintf(w, "\rtokenbench: %s %-9s %3.0fs  %d rotations  %d/s  %d errors\x1b[K",
				l.t.name, phase, now.Sub(began).Seconds(), done, done-prev, l.errs.Load())
			prev = done
		}
	}
}
