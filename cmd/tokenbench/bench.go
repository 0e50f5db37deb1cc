package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"iter"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/cmd/internal/cli"
)

// synopsis and help are what tokenbench -h prints above the flags.
const (
	synopsis = "[-k N] [--families-per-worker N] [--duration D] [--warmup D] [--baseline [--rounds N] [--baseline-event-bytes N]] [--target [--tokend-pid PID]] [--instances N [--nats-server PATH]] [--ssf-webhooks N] [--tokend-flag FLAG]..."
	help     = `Measures rotations per second, latency and cost of tokend, optionally
against a minimal baseline.

Starts a tokend (built from the source tree around the working directory
unless --tokend is given) with its own temporary data directory and free
loopback ports and loads it with K workers, each sending one request at a
time as fast as tokend answers: after --warmup, for --duration. Then it
reports rotations per second, latency percentiles, errors by kind, tokend's
CPU time per 1,000 rotations and peak RSS (from /proc, Linux only), this
process's own CPU, and how long tokend's read model took to apply the last
rotation after the load stopped. tokend is stopped with SIGTERM (exit status
0 expected) and its directory removed unless --keep.

Each worker first issues --families-per-worker families (default 32) and
then rotates them round-robin, so a family is rotated every Nth request of
its worker: many families, each rotated now and then, as in production.
--families-per-worker 1 gives each worker one family, rotated back to back
(the shape of the measurements before issue 13).
The started tokend's refresh and issue rate limits are off
(TOKEND_RATE_REFRESH_PER_FAMILY=0, TOKEND_RATE_ISSUE_PER_CLIENT=0): with
few families per worker the load rotates each far faster than any client
may.

--baseline first runs the same load against tokenbaseline, the minimal
pipeline (per request one append of a --baseline-event-bytes event to the
family's subject, fenced on its last sequence, and a reply; the same
storage and fsync), and prints both with tokend/baseline ratios. The
machine's speed drifts while it is shared, so --rounds N repeats the pair N
times, alternating which goes first (ABBA), and reports each round's ratios
and their medians. --target measures the tokend already running at
--nats-url instead of starting one (with whatever rate limits it has); its
CPU and RSS only with --tokend-pid.

--instances N starts a standalone nats-server (built from the version in
go.mod unless --nats-server is given; JetStream with file storage and
tokend's default limits, 256 MiB of memory and 10 GiB of disk) and N
tokend connected to it with --nats-url, each with its own data directory,
read model and HTTP address. The load's requests reach them through the
queue group. The server figures are then those of all the processes
together, and a second table breaks them down by process: the rotations
each tokend appended (its /metrics) and its share, CPU and peak RSS, and
how long each instance's read model took to apply the last rotation. An
instance that rotated nothing makes bench fail. --instances 1 measures one
tokend this way, comparable with N; without --instances tokend embeds its
server (the default, and the only shape --baseline compares). With
--instances, --tokend-flag=--sync-always sets the server's sync_interval to
always.

--ssf-webhooks N measures rotations while tokend delivers security events:
once the started tokend is ready, before the warmup, N operator webhooks
are added to it over NATS (as tokenctl ssf webhooks add does; with
--instances the instances share them), each for every event type of
every client, all POSTing to a loopback HTTP sink in this process that
answers 204 and counts the requests. Each webhook's delivery reads every
event from the stream, off the refresh path; a rotation makes no
security event and is acknowledged without a request. The report adds
how long after the load tokend's delivery had nothing pending for any of
them (asked of tokend, as tokenctl ssf streams show does; bounded like
the read model's catch-up) and the requests the sink got. With
--baseline only the tokend runs get webhooks; not with --target or
--idle.

A progress line is drawn on stderr when it is a terminal. A failed refresh
counts as an error of its kind (the contract code, "timeout" or
"transport") and is retried after a pause with the same token; a refused
family is replaced by a new one when its turn comes. --timeout bounds each
request.`
)

// declare adds the bench's own flags to fs.
func (o *benchOptions) declare(fs *flag.FlagSet) {
	fs.IntVar(&o.k, "k", 16, "`N` workers, each sending one request at a time")
	fs.IntVar(&o.familiesPerWorker, "families-per-worker", 32, "each worker rotates `N` families of its own round-robin")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measure for `D`")
	fs.DurationVar(&o.warmup, "warmup", 2*time.Second, "load for `D` before measuring, not counted")
	fs.IntVar(&o.conns, "conns", 0, "`N` NATS connections the workers share (default 8, at most K)")
	fs.BoolVar(&o.baseline, "baseline", false, "also run the load against tokenbaseline and print the ratios")
	fs.StringVar(&o.order, "order", "baseline,tokend", "with --baseline: which runs first (`ORDER`: baseline,tokend or tokend,baseline)")
	fs.IntVar(&o.rounds, "rounds", 1, "with --baseline: run the pair `N` times, alternating the order, and report the median ratios")
	fs.BoolVar(&o.target, "target", false, "measure the tokend at --nats-url instead of starting one")
	fs.IntVar(&o.tokendPID, "tokend-pid", 0, "with --target: the `PID` of that tokend, for its CPU and RSS")
	fs.StringVar(&o.tokendBin, "tokend", "", "the tokend binary to start (`PATH`; default: go build ./cmd/tokend)")
	fs.StringVar(&o.baselineBin, "tokenbaseline", "", "the tokenbaseline binary (`PATH`; default: go build ./cmd/tokenbaseline)")
	fs.IntVar(&o.baselineEventBytes, "baseline-event-bytes", 400, "with --baseline: tokenbaseline's events are `N` bytes (its --event-bytes)")
	fs.Func("tokend-flag", "pass `FLAG` to the started tokend, e.g. --tokend-flag=--sync-always (repeatable);\n"+
		"--sync-always goes to tokenbaseline too", func(v string) error {
		o.tokendFlags = append(o.tokendFlags, v)
		return nil
	})
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary binaries, data directories and server logs")
	fs.IntVar(&o.instances, "instances", 0, "start `N` tokend on one standalone nats-server instead of one tokend embedding it")
	fs.StringVar(&o.natsServerBin, "nats-server", "", "with --instances: the nats-server binary (`PATH`; default: go build github.com/nats-io/nats-server/v2)")
	fs.IntVar(&o.ssfWebhooks, "ssf-webhooks", 0, "add `N` webhooks of every event to the started tokend, delivered to a sink in this process")
	fs.IntVar(&o.idle, "idle", 0, "instead of rotating: issue `N` families with K workers (--families-per-worker does not apply),\n"+
		"stay idle for --duration, and report tokend's memory")
}

type benchOptions struct {
	k, conns, tokendPID    int
	familiesPerWorker      int
	baselineEventBytes     int
	idle, rounds           int
	instances              int // 0: one tokend with its NATS server embedded
	ssfWebhooks            int
	duration, warmup       time.Duration
	baseline, target, keep bool
	order                  string
	tokendBin, baselineBin string
	natsServerBin          string
	tokendFlags            []string
}

func (o *benchOptions) check() error {
	switch {
	case o.k < 1:
		return errors.New("-k must be at least 1")
	case o.familiesPerWorker < 1:
		return errors.New("--families-per-worker must be at least 1")
	case o.baselineEventBytes < 1:
		return errors.New("--baseline-event-bytes must be positive")
	case o.duration <= 0 || o.warmup < 0:
		return errors.New("--duration must be positive and --warmup not negative")
	case o.conns < 0:
		return errors.New("--conns must not be negative")
	case o.rounds < 1 || o.rounds > 1 && !o.baseline:
		return errors.New("--rounds N repeats the --baseline comparison: N at least 1")
	case o.order != "baseline,tokend" && o.order != "tokend,baseline":
		return fmt.Errorf("--order %q: want baseline,tokend or tokend,baseline", o.order)
	case o.target && (o.tokendBin != "" || len(o.tokendFlags) > 0):
		return errors.New("--tokend and --tokend-flag start a tokend; --target measures one already running")
	case o.tokendPID != 0 && !o.target:
		return errors.New("--tokend-pid goes with --target; a started tokend's pid is known")
	case o.idle < 0 || o.idle > 0 && (o.baseline || o.target):
		return errors.New("--idle N measures a started tokend's memory: not negative, and not with --baseline or --target")
	case o.instances < 0:
		return errors.New("--instances must not be negative")
	case o.instances > 0 && (o.baseline || o.target || o.idle > 0):
		return errors.New("--instances starts tokend instances on a nats-server of their own: not with --baseline (a single process embedding its server), --target or --idle")
	case o.natsServerBin != "" && o.instances == 0:
		return errors.New("--nats-server goes with --instances")
	case o.ssfWebhooks < 0 || o.ssfWebhooks > 0 && (o.target || o.idle > 0):
		return errors.New("--ssf-webhooks N adds webhooks to the tokend bench starts: not negative, and not with --target (a deployment's webhooks are its operators') or --idle (nothing to deliver)")
	}
	if o.conns == 0 {
		o.conns = 8
	}
	o.conns = min(o.conns, o.k) // a connection without a worker would sit idle
	return nil
}

// rounds returns the runs of each round in the order they happen: with
// --baseline the pair, in --order first and reversed in every other round,
// so a drift of the machine's speed weighs on both alike.
func (o *benchOptions) roundRuns() [][]string {
	if !o.baseline {
		return [][]string{{"tokend"}}
	}
	var rounds [][]string
	for i := range o.rounds {
		pair := strings.Split(o.order, ",")
		if i%2 == 1 {
			slices.Reverse(pair)
		}
		rounds = append(rounds, pair)
	}
	return rounds
}

// tokendBenchEnv lifts tokend's rate limits (per family refreshes, per
// client issues), which exist to keep one noisy family or client from
// writing the stream full: with them, a load that rotates each family, or
// issues families, as fast as it can would measure the limiter. A
// variable rather than a flag, because a tokend without the limit ignores
// it; a flag beats it, so --tokend-flag=--rate-refresh-per-family=10 puts
// the limit back.
var tokendBenchEnv = []string{"TOKEND_RATE_REFRESH_PER_FAMILY=0", "TOKEND_RATE_ISSUE_PER_CLIENT=0"}

// syncAlwaysIn reports whether tokend's flags turn on --sync-always, which
// the baseline then gets too: an fsync per append is most of the cost.
func syncAlwaysIn(flags []string) bool {
	on := false
	for _, f := range flags {
		name, val, hasVal := strings.Cut(strings.TrimLeft(f, "-"), "=")
		if name != "sync-always" {
			continue
		}
		b, err := strconv.ParseBool(val)
		on = !hasVal || err == nil && b
	}
	return on
}

// baselineFlags are tokenbaseline's flags beyond its directory and
// addresses.
func (o *benchOptions) baselineFlags() []string {
	flags := []string{"--event-bytes", strconv.Itoa(o.baselineEventBytes)}
	if syncAlwaysIn(o.tokendFlags) {
		flags = append(flags, "--sync-always")
	}
	return flags
}

// benchReport is what bench prints.
type benchReport struct {
	K                 int `json:"k"` // workers
	FamiliesPerWorker int `json:"families_per_worker"`
	Connections       int `json:"connections"`
	// BaselineEventBytes is the size of tokenbaseline's events, when it ran.
	BaselineEventBytes int         `json:"baseline_event_bytes,omitempty"`
	WarmupSeconds      float64     `json:"warmup_s"`
	DurationSeconds    float64     `json:"duration_s"`
	TokendFlags        []string    `json:"tokend_flags"`
	Runs               []runReport `json:"runs"` // in the order they ran
	// Instances is --instances: how many tokend shared a standalone
	// nats-server; absent when one tokend embedded it.
	Instances int `json:"instances,omitempty"`
	// Rounds holds each round's ratios with --baseline; Ratios is their
	// median, figure by figure.
	Rounds []ratioReport `json:"rounds,omitempty"`
	Ratios *ratioReport  `json:"ratios,omitempty"`
}

// ratioReport is tokend over baseline; a ratio is absent when the
// baseline's figure is 0 or unknown.
type ratioReport struct {
	Throughput *float64 `json:"throughput"`
	P50        *float64 `json:"p50"`
	P99        *float64 `json:"p99"`
	CPUPer1000 *float64 `json:"cpu_per_1000"`
}

func ratio(num, den float64) *float64 {
	if den == 0 {
		return nil
	}
	r := num / den
	return &r
}

func ratioPtr(num, den *float64) *float64 {
	if num == nil || den == nil {
		return nil
	}
	return ratio(*num, *den)
}

// medianRatios takes each figure's median over the rounds that have it.
func medianRatios(rounds []ratioReport) *ratioReport {
	median := func(figure func(ratioReport) *float64) *float64 {
		var vs []float64
		for _, r := range rounds {
			if v := figure(r); v != nil {
				vs = append(vs, *v)
			}
		}
		if len(vs) == 0 {
			return nil
		}
		slices.Sort(vs)
		m := vs[len(vs)/2]
		if len(vs)%2 == 0 {
			m = (vs[len(vs)/2-1] + m) / 2
		}
		return &m
	}
	return &ratioReport{
		Throughput: median(func(r ratioReport) *float64 { return r.Throughput }),
		P50:        median(func(r ratioReport) *float64 { return r.P50 }),
		P99:        median(func(r ratioReport) *float64 { return r.P99 }),
		CPUPer1000: median(func(r ratioReport) *float64 { return r.CPUPer1000 }),
	}
}

func ratios(tokend, baseline runReport) *ratioReport {
	return &ratioReport{
		Throughput: ratio(tokend.RotationsPerSecond, baseline.RotationsPerSecond),
		P50:        ratio(tokend.LatencyMs.P50, baseline.LatencyMs.P50),
		P99:        ratio(tokend.LatencyMs.P99, baseline.LatencyMs.P99),
		CPUPer1000: ratioPtr(tokend.ServerCPUPer1000, baseline.ServerCPUPer1000),
	}
}

func bench(ctx context.Context, e *env, o *benchOptions) error {
	tty := cli.IsTerminal(e.stderr)
	// status shows what bench is doing on the terminal's last line; ""
	// erases it.
	status := func(msg string) {
		switch {
		case !tty:
		case msg == "":
			fmt.Fprint(e.stderr, "\r\x1b[K")
		default:
			fmt.Fprintf(e.stderr, "\rtokenbench: %s\x1b[K", msg)
		}
	}
	defer status("")

	bins := map[string]string{"tokend": o.tokendBin, "tokenbaseline": o.baselineBin, "nats-server": o.natsServerBin}
	var build []string
	if !o.target && o.tokendBin == "" {
		build = append(build, "tokend")
	}
	if o.baseline && o.baselineBin == "" {
		build = append(build, "tokenbaseline")
	}
	if o.instances > 0 && o.natsServerBin == "" {
		build = append(build, "nats-server")
	}
	if len(build) > 0 {
		dir, err := os.MkdirTemp("", "tokenbench-bin-")
		if err != nil {
			return err
		}
		defer keepOrRemove(e, o.keep, dir, "binaries")
		status("building " + strings.Join(build, " and ") + "…")
		built, err := buildServers(ctx, dir, build)
		if err != nil {
			return err
		}
		maps.Copy(bins, built)
	}

	if o.idle > 0 {
		status("issuing " + strconv.Itoa(o.idle) + " families…")
		return benchIdle(ctx, e, o, bins["tokend"])
	}
	cfg := loadConfig{k: o.k, familiesPerWorker: o.familiesPerWorker, conns: o.conns, warmup: o.warmup, duration: o.duration, timeout: e.timeout, ticks: clockTicks()}
	if tty {
		cfg.progress = e.stderr
	}
	rep := benchReport{K: o.k, FamiliesPerWorker: o.familiesPerWorker, Connections: o.conns, WarmupSeconds: o.warmup.Seconds(),
		DurationSeconds: o.duration.Seconds(), TokendFlags: append([]string{}, o.tokendFlags...), Instances: o.instances}
	if o.baseline {
		rep.BaselineEventBytes = o.baselineEventBytes
	}
	var problems []error
	rounds := o.roundRuns()
	for i, round := range rounds {
		byName := map[string]runReport{}
		for _, name := range round {
			if len(rounds) > 1 {
				status(fmt.Sprintf("round %d of %d, %s: starting…", i+1, len(rounds), name))
			} else {
				status(name + ": starting…")
			}
			run, stopErr, err := benchRun(ctx, e, o, name, bins, cfg)
			if err != nil {
				return errors.Join(err, stopErr)
			}
			rep.Runs = append(rep.Runs, run)
			byName[name] = run
			if run.CatchUpError != "" {
				problems = append(problems, fmt.Errorf("%s: %s", name, run.CatchUpError))
			}
			if run.SSFCatchUpError != "" {
				problems = append(problems, fmt.Errorf("%s: %s", name, run.SSFCatchUpError))
			}
			for _, p := range run.Processes {
				if p.Error != "" {
					problems = append(problems, fmt.Errorf("%s: %s", p.Name, p.Error))
				}
			}
			if stopErr != nil {
				problems = append(problems, stopErr)
			}
		}
		if o.baseline {
			rep.Rounds = append(rep.Rounds, *ratios(byName["tokend"], byName["baseline"]))
		}
	}
	if o.baseline {
		rep.Ratios = medianRatios(rep.Rounds)
	}
	status("")
	if e.json {
		data, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s\n", data)
	} else {
		rep.writeTable(e.stdout)
	}
	return errors.Join(problems...)
}

// benchRun starts the server of one run (unless --target), loads it and
// stops it. stopErr is a server that did not stop cleanly: the measurement
// still stands.
func benchRun(ctx context.Context, e *env, o *benchOptions, name string, bins map[string]string, cfg loadConfig) (_ runReport, stopErr, err error) {
	var (
		t     loadTarget
		procs []*serverProc // started for this run, stopped in this order
	)
	switch {
	case name == "baseline":
		var p *serverProc
		if p, err = startServer(ctx, "tokenbaseline", bins["tokenbaseline"], o.baselineFlags(), nil); err == nil {
			procs = []*serverProc{p}
			t = loadTarget{name: name, url: p.natsURL, prefix: "baseline", familyInBody: true, procs: []targetProc{{name: p.name, pid: p.pid()}}}
		}
	case o.target:
		t = loadTarget{name: name, url: e.natsURL, prefix: e.prefix, opts: e.natsOpts, readModel: true}
		if o.tokendPID != 0 {
			t.procs = []targetProc{{name: "tokend", pid: o.tokendPID}}
		}
	case o.instances > 0:
		if procs, err = startInstances(ctx, o, bins, e.prefix); err == nil {
			t = instancesTarget(procs, e.prefix)
		}
	default:
		var p *serverProc
		if p, err = startServer(ctx, "tokend", bins["tokend"], append([]string{"--subject-prefix", e.prefix}, o.tokendFlags...), tokendBenchEnv); err == nil {
			procs = []*serverProc{p}
			t = loadTarget{name: name, url: p.natsURL, prefix: e.prefix, readModel: true, procs: []targetProc{{name: p.name, pid: p.pid()}}}
		}
	}
	if err != nil {
		return runReport{}, nil, err
	}
	defer func() {
		for _, p := range procs {
			err := p.stop(o.keep)
			if err == nil && o.keep {
				fmt.Fprintf(e.stderr, "tokenbench: kept the %s data and log in %s\n", p.name, p.dir)
			}
			stopErr = errors.Join(stopErr, err)
		}
		// Only once tokend stopped: it delivers to the sink until then.
		if t.ssf != nil {
			t.ssf.sink.close()
		}
	}()
	if o.ssfWebhooks > 0 && name != "baseline" {
		if t.ssf, err = addSSFWebhooks(ctx, t, o.ssfWebhooks, e.timeout); err != nil {
			return runReport{}, nil, err
		}
	}
	run, err := runLoad(ctx, t, cfg)
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("bench interrupted: %w", err)
	}
	return run, nil, err
}

// keepOrRemove removes dir, or with keep says where it is.
func keepOrRemove(e *env, keep bool, dir, what string) {
	if keep {
		fmt.Fprintf(e.stderr, "tokenbench: kept the %s in %s\n", what, dir)
		return
	}
	os.RemoveAll(dir)
}

// writeTable prints the report for a human: one column per run, in the
// order they ran, and the tokend/baseline ratios last.
func (r benchReport) writeTable(w io.Writer) {
	flags := "none"
	if len(r.TokendFlags) > 0 {
		flags = strings.Join(r.TokendFlags, " ")
	}
	fmt.Fprintf(w, "load: %s, %d NATS connections, warmup %v, measured %v\n",
		r.shape(), r.Connections, seconds(r.WarmupSeconds), seconds(r.DurationSeconds))
	fmt.Fprintf(w, "tokend flags: %s", flags)
	if r.BaselineEventBytes > 0 {
		fmt.Fprintf(w, "; baseline events: %d bytes", r.BaselineEventBytes)
	}
	if r.Instances > 0 {
		fmt.Fprintf(w, "\nservers: %s on one standalone nats-server; server figures are all processes together", plural(r.Instances, "tokend instance"))
	}
	fmt.Fprint(w, "\n\n")

	header := []string{""}
	for _, run := range r.Runs {
		header = append(header, run.Name)
	}
	if r.Ratios != nil {
		if len(r.Rounds) > 1 {
			header = append(header, "tokend/baseline, median")
		} else {
			header = append(header, "tokend/baseline")
		}
	}
	rows := [][]string{header}
	// row adds a line; ratio is its tokend/baseline cell, or nil for a
	// figure without one.
	row := func(label string, cell func(runReport) string, ratio func(*ratioReport) *float64) {
		cells := []string{label}
		for _, run := range r.Runs {
			cells = append(cells, cell(run))
		}
		if r.Ratios != nil && ratio != nil {
			cells = append(cells, optional(ratio(r.Ratios), "%.2f"))
		}
		rows = append(rows, cells)
	}
	ms := func(v float64) string { return fmt.Sprintf("%.3f", v) }
	row("rotations/s", func(x runReport) string { return fmt.Sprintf("%.0f", x.RotationsPerSecond) },
		func(rt *ratioReport) *float64 { return rt.Throughput })
	row("rotations", func(x runReport) string { return strconv.Itoa(x.Rotations) }, nil)
	row("latency p50 (ms)", func(x runReport) string { return ms(x.LatencyMs.P50) }, func(rt *ratioReport) *float64 { return rt.P50 })
	row("latency p95 (ms)", func(x runReport) string { return ms(x.LatencyMs.P95) }, nil)
	row("latency p99 (ms)", func(x runReport) string { return ms(x.LatencyMs.P99) }, func(rt *ratioReport) *float64 { return rt.P99 })
	row("latency max (ms)", func(x runReport) string { return ms(x.LatencyMs.Max) }, nil)
	row("errors", func(x runReport) string { return strconv.FormatInt(sum(maps.Values(x.Errors)), 10) }, nil)
	kinds := map[string]bool{}
	for _, run := range r.Runs {
		for kind := range run.Errors {
			kinds[kind] = true
		}
	}
	for _, kind := range slices.Sorted(maps.Keys(kinds)) {
		row("  "+kind, func(x runReport) string { return strconv.FormatInt(x.Errors[kind], 10) }, nil)
	}
	row("server CPU s / 1000 rotations", func(x runReport) string { return optional(x.ServerCPUPer1000, "%.3f") },
		func(rt *ratioReport) *float64 { return rt.CPUPer1000 })
	row("server CPU s", func(x runReport) string { return optional(x.ServerCPUSeconds, "%.2f") }, nil)
	row("server peak RSS (MiB)", func(x runReport) string {
		if x.ServerPeakRSSBytes == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(*x.ServerPeakRSSBytes)/(1<<20))
	}, nil)
	row("bench CPU s / 1000 rotations", func(x runReport) string { return optional(x.BenchCPUPer1000, "%.3f") }, nil)
	row("read model catch-up (s)", func(x runReport) string {
		if x.CatchUpError != "" {
			return "failed"
		}
		return optional(x.CatchUpSeconds, "%.3f")
	}, nil)
	if slices.ContainsFunc(r.Runs, func(x runReport) bool { return x.SSFWebhooks > 0 }) {
		row("SSF webhooks", func(x runReport) string {
			if x.SSFWebhooks == 0 {
				return "-"
			}
			return strconv.Itoa(x.SSFWebhooks)
		}, nil)
		row("SSF delivery catch-up (s)", func(x runReport) string {
			if x.SSFCatchUpError != "" {
				return "failed"
			}
			return optional(x.SSFCatchUpSeconds, "%.3f")
		}, nil)
		row("SSF webhook requests", func(x runReport) string {
			if x.SSFRequests == nil {
				return "-"
			}
			return strconv.FormatInt(*x.SSFRequests, 10)
		}, nil)
	}
	writeColumns(w, rows)
	for _, run := range r.Runs {
		if len(run.Processes) > 0 {
			fmt.Fprintln(w)
			run.writeProcesses(w)
		}
	}
	if len(r.Rounds) > 1 {
		fmt.Fprintln(w)
		ratioRow := func(label string, rt ratioReport) []string {
			return []string{label, optional(rt.Throughput, "%.2f"), optional(rt.P50, "%.2f"),
				optional(rt.P99, "%.2f"), optional(rt.CPUPer1000, "%.2f")}
		}
		rows := [][]string{{"tokend/baseline", "rotations/s", "p50", "p99", "CPU / rotation"}}
		for i, rt := range r.Rounds {
			rows = append(rows, ratioRow(fmt.Sprintf("round %d", i+1), rt))
		}
		rows = append(rows, ratioRow("median", *r.Ratios))
		writeColumns(w, rows)
	}
}

// writeProcesses prints the breakdown of a run by process: each tokend,
// all of them together, and the nats-server.
func (run runReport) writeProcesses(w io.Writer) {
	rows := [][]string{{"by process", "rotations", "share", "CPU s / 1000 rotations", "CPU s", "peak RSS (MiB)", "read model catch-up (s)"}}
	mib := func(v *int64) string {
		if v == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(*v)/(1<<20))
	}
	var tokendRotations []*int64
	add := func(p processReport) {
		rotations, share, catchUp := "-", "-", optional(p.CatchUpSeconds, "%.3f")
		if p.Rotations != nil {
			rotations = strconv.FormatInt(*p.Rotations, 10)
		}
		if p.Share != nil {
			share = fmt.Sprintf("%.0f%%", *p.Share*100)
		}
		if p.CatchUpError != "" {
			catchUp = "failed"
		}
		rows = append(rows, []string{p.Name, rotations, share, optional(p.CPUPer1000, "%.3f"), optional(p.CPUSeconds, "%.2f"), mib(p.PeakRSSBytes), catchUp})
	}
	var tokends []processReport
	for _, p := range run.Processes {
		if p.Name != "nats-server" {
			tokends = append(tokends, p)
			tokendRotations = append(tokendRotations, p.Rotations)
			add(p)
		}
	}
	all := processReport{Name: "tokend, all", CPUSeconds: run.TokendCPUSeconds, CPUPer1000: run.TokendCPUPer1000,
		PeakRSSBytes: sumOf(tokends, func(p processReport) *int64 { return p.PeakRSSBytes }),
		Rotations:    sumOf(tokendRotations, func(v *int64) *int64 { return v }), CatchUpSeconds: run.CatchUpSeconds}
	if all.Rotations != nil && *all.Rotations > 0 {
		whole := 1.0
		all.Share = &whole
	}
	if run.CatchUpError != "" {
		all.CatchUpError = run.CatchUpError
	}
	add(all)
	for _, p := range run.Processes {
		if p.Name == "nats-server" {
			add(p)
		}
	}
	writeColumns(w, rows)
}

// plural is n thing, or n things.
func plural(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

// shape says how the load was made: how many workers rotate how many
// families each.
func (r benchReport) shape() string {
	workers := fmt.Sprintf("K=%d workers", r.K)
	if r.K == 1 {
		workers = "K=1 worker"
	}
	if r.FamiliesPerWorker == 1 {
		return workers + ", one family each, rotated back to back"
	}
	return fmt.Sprintf("%s, %d families each, rotated round-robin (%d families)", workers, r.FamiliesPerWorker, r.K*r.FamiliesPerWorker)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// optional formats v, or "-" when it is unknown.
func optional(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

func sum(values iter.Seq[int64]) int64 {
	var n int64
	for v := range values {
		n += v
	}
	return n
}

// writeColumns prints rows as a table: the first column left-aligned, the
// others (numbers) right-aligned, two spaces apart.
func writeColumns(w io.Writer, rows [][]string) {
	var widths []int
	for _, r := range rows {
		for i, c := range r {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(c + pad)
				continue
			}
			b.WriteString("  " + pad + c)
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}
