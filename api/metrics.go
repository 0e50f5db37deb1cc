package api

import (
	"cmp"
	"errors"
	"regexp"
	"runtime"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokend/tokend/connlimit"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/dpop"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/keys"
	"github.com/tokend/tokend/registry"
	"github.com/tokend/tokend/signals"
	"github.com/tokend/tokend/tokens"
)

// Metrics are tokend's Prometheus metrics. Label values come from fixed sets
// (commands, error codes, event types, reasons); never a token, subject,
// client or family id.
type Metrics struct {
	commands        *prometheus.CounterVec
	commandDuration *prometheus.HistogramVec
	queries         *prometheus.CounterVec
	queryDuration   *prometheus.HistogramVec

	eventsAppended  *prometheus.CounterVec
	replays         prometheus.Counter
	familiesRevoked *prometheus.CounterVec
	refreshRejected *prometheus.CounterVec
	reuseHits       prometheus.Counter
	fenceConflicts  prometheus.Counter
	storeErrors     prometheus.Counter
	rateLimited     *prometheus.CounterVec
	dpopVerified    prometheus.Counter
	dpopRefused     *prometheus.CounterVec
	replyErrors     *prometheus.CounterVec
	oauthRequests   *prometheus.CounterVec
	registryChanges *prometheus.CounterVec
	oauthDuration   *prometheus.HistogramVec
	archived        prometheus.Counter
	keysRevoked     *prometheus.CounterVec
	subjectsErased  prometheus.Counter
	outboxFailed    *prometheus.CounterVec
	ssf             ssfMetrics

	oauthIntrospections *prometheus.CounterVec
	natsIntrospections  *prometheus.CounterVec

	projectionBatch   prometheus.Histogram
	projectionApplied prometheus.Counter

	connections        *prometheus.GaugeVec
	connectionsLimit   *prometheus.GaugeVec
	connectionsRefused *prometheus.CounterVec
	requestsDropped    *prometheus.CounterVec

	reasons reasonLabels
}

// latencyBuckets span a local fenced append (about a millisecond) to the
// request timeout.
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// NewMetrics registers tokend's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_commands_total", Help: "Commands answered, by command and outcome (ok or the contract error code).",
		}, []string{"command", "outcome"}),
		commandDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokend_command_duration_seconds", Help: "Time from receiving a command to sending its reply.",
			Buckets: latencyBuckets,
		}, []string{"command"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_queries_total", Help: "Queries answered over NATS and HTTP, by query and outcome.",
		}, []string{"query", "outcome"}),
		queryDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokend_query_duration_seconds", Help: "Time to answer a query, min_seq waits included.",
			Buckets: latencyBuckets,
		}, []string{"query"}),
		eventsAppended: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_events_appended_total", Help: "Events this instance stored in the stream, by type.",
		}, []string{"type"}),
		replays: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_replays_detected_total", Help: "Rotated refresh tokens presented again outside the reuse interval.",
		}),
		familiesRevoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_families_revoked_total", Help: "Token families revoked, by reason.",
		}, []string{"reason"}),
		refreshRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_refresh_rejected_total", Help: "Refreshes refused and audited as refresh.rejected, by reason.",
		}, []string{"reason"}),
		reuseHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_reuse_interval_hits_total", Help: "Just-rotated tokens presented again inside the reuse interval and answered with the same child.",
		}),
		fenceConflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_fence_conflicts_total", Help: "Appends refused because another writer advanced the family first; each is retried after a reload.",
		}),
		storeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_store_errors_total", Help: "Event store reads and writes that failed (answered temporarily_unavailable).",
		}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_rate_limited_total", Help: "Commands refused by a rate limit (answered temporarily_unavailable with retry_after_ms), by limit.",
		}, []string{"limit"}),
		dpopVerified: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_dpop_proofs_verified_total", Help: "DPoP proofs of refreshes that passed every check (RFC 9449).",
		}),
		dpopRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_dpop_proofs_refused_total",
			Help: "Refreshes refused for their DPoP proof, by reason: a check of the proof (malformed, typ, alg, jwk, signature, htm, htu, iat, jti, ath, nonce, replay), none where one is needed (missing), or one by another key than the family's (key_mismatch).",
		}, []string{"reason"}),
		replyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_reply_errors_total", Help: "Replies that could not be sent (too large, connection lost), by endpoint.",
		}, []string{"endpoint"}),
		oauthRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_oauth_requests_total", Help: "OAuth HTTP requests answered, by endpoint (token, revoke, introspect, ssf_config, ssf_status, ssf_subjects, ssf_verify, ssf_poll) " +
				"and outcome (ok, the OAuth or RFC 6750 error code, or no_token).",
		}, []string{"endpoint", "outcome"}),
		registryChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_client_registry_changes_total", Help: "Changes this instance made to the client registry, by action (create, update, remove, rotate_secret).",
		}, []string{"action"}),
		oauthDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokend_oauth_request_duration_seconds", Help: "Time to answer an OAuth HTTP request.", Buckets: latencyBuckets,
		}, []string{"endpoint"}),
		archived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_families_archived_total", Help: "Families past their absolute expiry summarized by a family.archived event.",
		}),
		oauthIntrospections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_oauth_introspections_total", Help: "POST /oauth2/introspect answers, by the caller's relation to the token " +
				"(own_client, resource_server, not_allowed, unknown) and result (active, inactive).",
		}, []string{"caller", "result"}),
		natsIntrospections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_nats_introspections_total", Help: "tokens.query.introspect answers, by result (active, inactive).",
		}, []string{"result"}),
		projectionBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tokend_projection_batch_duration_seconds", Help: "Time to apply one batch of events to the read model.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		projectionApplied: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_projection_events_applied_total", Help: "Stream messages applied to the read model.",
		}),
		subjectsErased: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokend_subjects_erased_total",
			Help: "Subjects whose personal data this instance erased (tokenctl subjects erase).",
		}),
		keysRevoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_keys_revoked_total", Help: "Keys this instance revoked (tokenctl keys revoke), by kind (mac, signing, set).",
		}, []string{"kind"}),
		outboxFailed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_deployment_events_failed_total",
			Help: "Deployment events (subject.revoked, client.revoked, key.revoked) that could not be stored after their revocation succeeded, by type: receivers of security events miss them.",
		}, []string{"type"}),
		connections: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokend_http_connections", Help: "Connections open on an HTTP listener (http, oauth, audit).",
		}, []string{"listener"}),
		connectionsLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokend_http_connections_limit", Help: "The cap on an HTTP listener's open connections, as in effect (lowered at start to fit the file limit).",
		}, []string{"listener"}),
		connectionsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_http_connections_refused_total", Help: "Connections refused at once because their HTTP listener was at its cap.",
		}, []string{"listener"}),
		requestsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_requests_dropped_total",
			Help: "Requests answered temporarily_unavailable without being run, by transport (nats, http), endpoint and reason (caller_deadline, caller_gone, slot_wait, queue_full).",
		}, []string{"transport", "endpoint", "reason"}),
	}
	reg.MustRegister(m.connections, m.connectionsLimit, m.connectionsRefused, m.requestsDropped)
	reg.MustRegister(m.commands, m.commandDuration, m.queries, m.queryDuration, m.eventsAppended, m.replays,
		m.familiesRevoked, m.refreshRejected, m.reuseHits, m.fenceConflicts, m.storeErrors, m.rateLimited, m.dpopVerified, m.dpopRefused,
		m.replyErrors, m.oauthRequests, m.oauthDuration, m.registryChanges, m.archived, m.projectionBatch, m.projectionApplied,
		m.oauthIntrospections, m.natsIntrospections, m.keysRevoked, m.subjectsErased, m.outboxFailed, buildInfo())
	// Series of the label values known in advance start at 0, so rates,
	// dashboards and alerts see them before the first event, not from it.
	for _, cmd := range []string{"issue", "refresh", "revoke"} {
		m.commandDuration.WithLabelValues(cmd)
		m.commands.WithLabelValues(cmd, "ok")
	}
	for _, q := range []string{"introspect", "family", "audit", "keys"} {
		m.queryDuration.WithLabelValues(q)
		m.queries.WithLabelValues(q, "ok")
	}
	for _, t := range events.Types {
		m.eventsAppended.WithLabelValues(t)
	}
	for _, reason := range []string{domain.ReasonReplayDetected, domain.ReasonDPoPKeyMismatch, domain.ReasonLostRotation} {
		m.familiesRevoked.WithLabelValues(m.reasons.label(reason))
	}
	for _, reason := range []string{domain.ReasonClientMismatch, domain.ReasonFamilyRevoked, domain.ReasonExpired,
		domain.ReasonUnknownToken, domain.ReasonInvalidScope, domain.ReasonInvalidTarget, domain.ReasonRetiredKey,
		domain.ReasonDPoPProofMissing, domain.ReasonLostRotation} {
		m.refreshRejected.WithLabelValues(reason)
	}
	for _, limit := range []string{tokens.LimitRefreshPerFamily, tokens.LimitIssuePerClient, tokens.LimitForeignPerClient} {
		m.rateLimited.WithLabelValues(limit)
	}
	for _, reason := range append(dpop.Reasons(), tokens.ProofMissing, tokens.ProofKeyMismatch) {
		m.dpopRefused.WithLabelValues(reason)
	}
	for _, action := range []string{registry.ClientCreated, registry.ClientUpdated, registry.ClientRemoved, registry.ClientSecretRotated} {
		m.registryChanges.WithLabelValues(action)
	}
	for _, result := range []string{"active", "inactive"} {
		m.natsIntrospections.WithLabelValues(result)
		for _, caller := range []string{callerOwnClient, callerResourceServer, callerNotAllowed, callerUnknown} {
			m.oauthIntrospections.WithLabelValues(caller, result)
		}
	}
	for _, kind := range keys.Kinds() {
		m.keysRevoked.WithLabelValues(kind)
	}
	for _, t := range []string{events.SubjectRevoked, events.ClientRevoked, events.KeyRevoked} {
		m.outboxFailed.WithLabelValues(t)
	}
	m.ssf = newSSFMetrics(reg)
	return m
}

func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "tokend_build_info", Help: "Always 1; the labels say which tokend is running.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(Version, cmp.Or(Revision(), "unknown"), runtime.Version()).Set(1)
	return g
}

// Revision is the VCS revision the running binary was built from, empty
// when the build recorded none (go run, go test, a build outside git).
func Revision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}

// VersionLine is what program --version prints: the release, the Go
// version and, when the build recorded it, the VCS revision.
func VersionLine(program string) string {
	return versionLine(program, runtime.Version(), Revision())
}

func versionLine(program, goVersion, revision string) string {
	line := program + " " + Version + " " + goVersion
	if revision != "" {
		line += " revision " + revision
	}
	return line
}

func (m *Metrics) command(name string, err error, took time.Duration) {
	if m == nil {
		return
	}
	m.commands.WithLabelValues(name, outcome(err)).Inc()
	m.commandDuration.WithLabelValues(name).Observe(took.Seconds())
}

func (m *Metrics) query(name string, err error, took time.Duration) {
	if m == nil {
		return
	}
	m.queries.WithLabelValues(name, outcome(err)).Inc()
	m.queryDuration.WithLabelValues(name).Observe(took.Seconds())
}

func outcome(err error) string {
	if err == nil {
		return "ok"
	}
	return domain.ErrorCode(err)
}

// Appended counts the events of one stored append (events.Writer.OnAppend).
func (m *Metrics) Appended(evs []domain.Event) {
	for _, e := range evs {
		m.eventsAppended.WithLabelValues(string(e.Type)).Inc()
		switch e.Type {
		case domain.ReplayDetected:
			m.replays.Inc()
		case domain.TokenReused:
			m.reuseHits.Inc()
		case domain.FamilyRevoked:
			m.familiesRevoked.WithLabelValues(m.reasons.label(e.Reason)).Inc()
		case domain.RefreshRejected:
			m.refreshRejected.WithLabelValues(e.Reason).Inc()
		}
	}
}

// FenceConflict counts a fence conflict (events.Writer.OnConflict).
func (m *Metrics) FenceConflict() { m.fenceConflicts.Inc() }

// StoreError counts a failed store operation (events.Writer.OnStoreError).
func (m *Metrics) StoreError(error) { m.storeErrors.Inc() }

// DPoPProof counts a proof verified ("") or refused by reason
// (tokens.Service.OnProof).
func (m *Metrics) DPoPProof(reason string) {
	if reason == "" {
		m.dpopVerified.Inc()
		return
	}
	m.dpopRefused.WithLabelValues(reason).Inc()
}

// RateLimited counts a command a rate limit refused (tokens.Service.OnRateLimited).
func (m *Metrics) RateLimited(limit string) { m.rateLimited.WithLabelValues(limit).Inc() }

func (m *Metrics) oauth(endpoint string, err error, took time.Duration) {
	if m == nil {
		return
	}
	outcome := "ok"
	if err != nil {
		outcome = outcomeOf(err)
	}
	m.oauthRequests.WithLabelValues(endpoint, outcome).Inc()
	m.oauthDuration.WithLabelValues(endpoint).Observe(took.Seconds())
}

// outcomeOf is the outcome of an OAuth request refused with err: its
// error code, or no_token for an SSF request without a bearer token (RFC
// 6750 section 3.1 gives that refusal no code).
func outcomeOf(err error) string {
	var be *bearerError
	if errors.As(err, &be) {
		return cmp.Or(be.code, "no_token")
	}
	return oauthErrorOf(err).code
}

// oauthIntrospection counts an HTTP introspection answered.
func (m *Metrics) oauthIntrospection(caller string, active bool) {
	if m != nil {
		m.oauthIntrospections.WithLabelValues(caller, introspectionResult(active)).Inc()
	}
}

// natsIntrospection counts a NATS introspection answered: NATS callers are
// not told apart (subject permissions decide who may ask).
func (m *Metrics) natsIntrospection(active bool) {
	if m != nil {
		m.natsIntrospections.WithLabelValues(introspectionResult(active)).Inc()
	}
}

func introspectionResult(active bool) string {
	if active {
		return "active"
	}
	return "inactive"
}

// ClientRegistryChange counts a registry change this instance made
// (registry.Registry.OnChange).
func (m *Metrics) ClientRegistryChange(action string) {
	m.registryChanges.WithLabelValues(action).Inc()
}

// ReplyError counts a reply that could not be sent.
func (m *Metrics) ReplyError(endpoint string) {
	if m != nil {
		m.replyErrors.WithLabelValues(endpoint).Inc()
	}
}

// ListenerHooks counts the connections of the HTTP listener named
// listener, whose cap is limit.
func (m *Metrics) ListenerHooks(listener string, limit int) connlimit.Hooks {
	m.connectionsLimit.WithLabelValues(listener).Set(float64(limit))
	open := m.connections.WithLabelValues(listener)
	refused := m.connectionsRefused.WithLabelValues(listener)
	return connlimit.Hooks{Opened: open.Inc, Closed: open.Dec, Refused: refused.Inc}
}

// Dropped counts a request answered without being run.
func (m *Metrics) Dropped(transport, endpoint, reason string) {
	if m != nil {
		m.requestsDropped.WithLabelValues(transport, endpoint, reason).Inc()
	}
}

// KeyRevoked counts a key this instance revoked, of kind keys.KindMAC,
// keys.KindSigning or keys.KindSET.
func (m *Metrics) KeyRevoked(kind string) {
	if m != nil {
		m.keysRevoked.WithLabelValues(kind).Inc()
	}
}

// SubjectErased counts a subject whose personal data this instance erased.
func (m *Metrics) SubjectErased() {
	if m != nil {
		m.subjectsErased.Inc()
	}
}

// DeploymentEventFailed counts a deployment event of type typ that could
// not be stored.
func (m *Metrics) DeploymentEventFailed(typ string) {
	if m != nil {
		m.outboxFailed.WithLabelValues(typ).Inc()
	}
}

// Archived counts families a janitor sweep archived (tokens.Janitor.OnArchived).
func (m *Metrics) Archived(n int) { m.archived.Add(float64(n)) }

// ProjectionBatch records one applied batch (projections.Projector.OnBatch).
func (m *Metrics) ProjectionBatch(events int, took time.Duration) {
	m.projectionApplied.Add(float64(events))
	m.projectionBatch.Observe(took.Seconds())
}

// reasonLabels bounds the reason label of revocations: a revoke's reason is
// free text from the caller, so only identifier-like reasons become label
// values, and only the first maxCustomReasons of them; the rest count as
// "other".
type reasonLabels struct {
	mu   sync.Mutex
	seen map[string]bool
}

const maxCustomReasons = 32

var reasonPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

func (r *reasonLabels) label(reason string) string {
	if !reasonPattern.MatchString(reason) {
		return "other"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[string]bool{}
	}
	if !r.seen[reason] {
		if len(r.seen) >= maxCustomReasons {
			return "other"
		}
		r.seen[reason] = true
	}
	return reason
}

// ssfMetrics are the SSF delivery's, per stream (label stream: the
// stream id, never a client id); signals.Engine feeds them through
// Metrics' SSF methods (signals.DeliveryMetrics).
type ssfMetrics struct {
	delivered, failed, retries *prometheus.CounterVec
	lagEvents, lagSeconds      *prometheus.GaugeVec
	status                     *prometheus.GaugeVec
}

func newSSFMetrics(reg prometheus.Registerer) ssfMetrics {
	m := ssfMetrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_ssf_sets_delivered_total", Help: "SETs (and webhook events) a receiver accepted, by stream: pushes answered 2xx, polled SETs acknowledged.",
		}, []string{"stream"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_ssf_sets_failed_total", Help: "SETs given up, by stream: refused for good by a push receiver (invalid_request, invalid_state) or reported in a poll's setErrs.",
		}, []string{"stream"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokend_ssf_delivery_retries_total", Help: "Failed push or webhook attempts that will be retried, by stream.",
		}, []string{"stream"}),
		lagEvents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokend_ssf_lag_events", Help: "Messages of the TOKENS stream a stream's consumer has not had acknowledged yet (undelivered or in flight), by stream; every instance reports it.",
		}, []string{"stream"}),
		lagSeconds: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokend_ssf_lag_seconds", Help: "Age of the oldest message a stream's consumer has not had acknowledged, by stream; 0 when caught up.",
		}, []string{"stream"}),
		status: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokend_ssf_stream_status", Help: "1 for a stream's current status (enabled, paused, disabled), 0 for the others.",
		}, []string{"stream", "status"}),
	}
	reg.MustRegister(m.delivered, m.failed, m.retries, m.lagEvents, m.lagSeconds, m.status)
	return m
}

// ssfStatuses are the values of tokend_ssf_stream_status's status label.
var ssfStatuses = []string{string(signals.StatusEnabled), string(signals.StatusPaused), string(signals.StatusDisabled)}

var _ signals.DeliveryMetrics = (*Metrics)(nil)

// SSFDelivered counts SETs a receiver of stream accepted.
func (m *Metrics) SSFDelivered(stream string, n int) {
	if m != nil {
		m.ssf.delivered.WithLabelValues(stream).Add(float64(n))
	}
}

// SSFFailed counts a SET of stream given up.
func (m *Metrics) SSFFailed(stream string) {
	if m != nil {
		m.ssf.failed.WithLabelValues(stream).Inc()
	}
}

// SSFRetried counts a failed attempt on stream that will be retried.
func (m *Metrics) SSFRetried(stream string) {
	if m != nil {
		m.ssf.retries.WithLabelValues(stream).Inc()
	}
}

// SSFLag reports stream's lag.
func (m *Metrics) SSFLag(stream string, events uint64, age time.Duration) {
	if m != nil {
		m.ssf.lagEvents.WithLabelValues(stream).Set(float64(events))
		m.ssf.lagSeconds.WithLabelValues(stream).Set(age.Seconds())
	}
}

// SSFStatus reports stream's status; the delivery counters start at 0
// with it, so rates see a stream from its start.
func (m *Metrics) SSFStatus(stream, status string) {
	if m == nil {
		return
	}
	for _, s := range ssfStatuses {
		v := 0.0
		if s == status {
			v = 1
		}
		m.ssf.status.WithLabelValues(stream, s).Set(v)
	}
	m.ssf.delivered.WithLabelValues(stream)
	m.ssf.failed.WithLabelValues(stream)
	m.ssf.retries.WithLabelValues(stream)
}

// SSFForget drops the series of a deleted stream.
func (m *Metrics) SSFForget(stream string) {
	if m == nil {
		return
	}
	for _, v := range []*prometheus.CounterVec{m.ssf.delivered, m.ssf.failed, m.ssf.retries} {
		v.DeleteLabelValues(stream)
	}
	m.ssf.lagEvents.DeleteLabelValues(stream)
	m.ssf.lagSeconds.DeleteLabelValues(stream)
	for _, s := range ssfStatuses {
		m.ssf.status.DeleteLabelValues(stream, s)
	}
}
