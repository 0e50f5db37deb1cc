package api

import (
	"strconv"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// A request that cannot be answered in time is not started: a refresh
// that runs after its caller gave up rotates the token all the same, and
// the caller's retry of that token, once the reuse interval is over, is
// judged a replay that revokes the family.

// maxSlotWait bounds how long a request waits in tokend for a slot of its
// budget (--max-commands-in-flight, --max-queries-in-flight), from when its
// handler got it. With a command's own bound (requestTimeout) it keeps a
// command that ran late within the default reuse interval (10 s) of its
// caller's retry, which then gets the same child instead of a replay.
const maxSlotWait = time.Second

// minTimeToRun is the least time before its caller's deadline a request
// is started with: a rotation takes about a millisecond, but under load
// its append can take tens.
const minTimeToRun = 100 * time.Millisecond

// MaxDeadlineSkew is how far a caller's clock may be ahead of tokend's
// for its Tokend-Deadline to be honoured as it meant it: tokend drops a
// request only once that deadline is this far past by its own clock.
// Instances' clocks are kept within 1 s of each other (docs/protocol.md
// section 14); callers' should be too.
const MaxDeadlineSkew = time.Second

// maxCallerTimeout caps a caller's Tokend-Timeout-Ms: past maxSlotWait
// any value means the same, and the cap keeps the arithmetic in range.
const maxCallerTimeout = time.Hour

// Why a request was answered without being run
// (tokend_requests_dropped_total's reason).
const (
	droppedCallerDeadline = "caller_deadline" // its caller's Tokend-Timeout-Ms ran out first
	droppedCallerGone     = "caller_gone"     // the HTTP client disconnected
	droppedSlotWait       = "slot_wait"       // it waited maxSlotWait for a slot
	droppedQueueFull      = "queue_full"      // as many requests were waiting as the budget has slots
)

var dropErrors = map[string]error{
	droppedCallerDeadline: &domain.Error{Code: domain.EUnavailable, Message: "the caller's timeout ran out before the request could start, retry"},
	droppedCallerGone:     &domain.Error{Code: domain.EUnavailable, Message: "the client went away before the request started"},
	droppedSlotWait:       &domain.Error{Code: domain.EUnavailable, Message: "busy: the request waited too long to start, retry", RetryAfterMs: 100},
	droppedQueueFull:      &domain.Error{Code: domain.EUnavailable, Message: "busy, retry", RetryAfterMs: 100},
}

// startBy returns the latest time a request its handler got at arrived
// may start, and why it is dropped past that time: the caller's timeout,
// if it sent one and it is the sooner, else maxSlotWait.
//
// The caller sends the time it has left, not a deadline on its clock, so
// the clocks of caller and tokend need not agree (gRPC's grpc-timeout
// does the same). The time in flight before the handler got the message
// is not counted: a millisecond or so, since the handlers never block
// the subscription (async).
func startBy(arrived time.Time, h micro.Headers) (time.Time, string, error) {
	latest, reason := arrived.Add(maxSlotWait), droppedSlotWait
	if v := h.Get(wire.HeaderTimeout); v != "" {
		ms, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			return time.Time{}, "", domain.Errorf(domain.EInvalidRequest, "header %s must be a whole number of milliseconds", wire.HeaderTimeout)
		}
		timeout := time.Duration(min(ms, uint64(maxCallerTimeout/time.Millisecond))) * time.Millisecond
		if byCaller := arrived.Add(timeout - minTimeToRun); byCaller.Before(latest) {
			latest, reason = byCaller, droppedCallerDeadline
		}
	}
	if v := h.Get(wire.HeaderDeadline); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 || ms > maxDeadlineMs {
			return time.Time{}, "", domain.Errorf(domain.EInvalidRequest, "header %s must be a time in Unix milliseconds", wire.HeaderDeadline)
		}
		// Past the caller's clock's deadline, with room for the clocks'
		// difference: a request that waited in the socket of a frozen
		// tokend is dropped even though its handler just got it.
		if byCaller := time.UnixMilli(ms).Add(MaxDeadlineSkew - minTimeToRun); byCaller.Before(latest) {
			latest, reason = byCaller, droppedCallerDeadline
		}
	}
	return latest, reason, nil
}

// maxDeadlineMs bounds a Tokend-Deadline so that the arithmetic stays in
// range: the year 9999.
const maxDeadlineMs = 253402300799999
