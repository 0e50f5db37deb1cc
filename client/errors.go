package client

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// The contract's error codes as sentinels: errors.Is(err, ErrInvalidGrant)
// holds for an *Error with that Code, however wrapped.
var (
	ErrInvalidRequest         = errors.New("invalid_request")
	ErrInvalidGrant           = errors.New("invalid_grant")
	ErrInvalidScope           = errors.New("invalid_scope")
	ErrInvalidTarget          = errors.New("invalid_target")
	ErrNotFound               = errors.New(CodeNotFound)
	ErrTemporarilyUnavailable = errors.New(CodeTemporarilyUnavailable)
	ErrServerError            = errors.New(CodeServerError)
	// ErrInvalidClient: the client id is not in tokend's client registry
	// (with --client-registry on). Terminal: it will not become known by
	// retrying.
	ErrInvalidClient = errors.New("invalid_client")
	// ErrInvalidDPoPProof: tokend refused the DPoP proof (RFC 9449): none
	// for a family bound to a key, or one that failed a check its
	// description names (a clock off by more than a minute, a DPoPURL
	// other than tokend's token endpoint). Neither terminal nor transient:
	// the session stays, and the refresh token was not used.
	ErrInvalidDPoPProof = errors.New("invalid_dpop_proof")
	// ErrUseDPoPNonce: tokend wants a proof carrying its nonce. A Source
	// retries at once with the nonce; it returns this only when tokend
	// refuses that retry's nonce as well. Neither terminal nor transient.
	ErrUseDPoPNonce = errors.New("use_dpop_nonce")
)

var sentinels = map[string]error{
	ErrInvalidRequest.Error():         ErrInvalidRequest,
	ErrInvalidGrant.Error():           ErrInvalidGrant,
	ErrInvalidScope.Error():           ErrInvalidScope,
	ErrInvalidTarget.Error():          ErrInvalidTarget,
	ErrNotFound.Error():               ErrNotFound,
	ErrTemporarilyUnavailable.Error(): ErrTemporarilyUnavailable,
	ErrServerError.Error():            ErrServerError,
	ErrInvalidClient.Error():          ErrInvalidClient,
	ErrInvalidDPoPProof.Error():       ErrInvalidDPoPProof,
	ErrUseDPoPNonce.Error():           ErrUseDPoPNonce,
}

// Is makes errors.Is(err, ErrInvalidGrant) and the other sentinels match an
// *Error with that code.
func (e *Error) Is(target error) bool {
	s, ok := sentinels[e.Code]
	return ok && s == target
}

// Errors of this package that are not answers from tokend.
var (
	// ErrNoSession: the store holds no refresh token for the session: it was
	// never begun, it ended on another replica, or it was signed out.
	// Terminal.
	ErrNoSession = errors.New("client: no refresh token stored for this session")
	// ErrConflict: a Store's compare-and-swap found another revision than
	// the one expected.
	ErrConflict = errors.New("client: session store revision conflict")
	// ErrStoreUnavailable wraps a failure of the session store other than
	// ErrNoSession and ErrConflict. Transient.
	ErrStoreUnavailable = errors.New("client: session store unavailable")
	// ErrBadReply: tokend answered a refresh with success but without an
	// access or refresh token, or with less than was asked (another
	// audience, a narrower scope). Neither terminal nor transient; nothing
	// from it is cached, and the stored refresh token stays as it was
	// unless the reply carried a new one.
	ErrBadReply = errors.New("client: tokend's reply lacks a token or the requested grant")
	// ErrLostRotation: a refresh whose reply was lost (it timed out) was
	// presented again, saying so, and tokend refused it: the token was
	// rotated longer ago than the reuse interval, so the child, whose only
	// copy was in that reply, is out of reach. tokend revoked the family
	// (reason lost_rotation), so no token is left that nobody holds. It
	// matches ErrInvalidGrant, so it is terminal.
	ErrLostRotation = &lostRotation{}
	// ErrClosed: the Source was closed.
	ErrClosed = errors.New("client: source closed")
	// errNotSent: the connection was down, so a refresh was not sent at
	// all; safe to retry at any time, unlike a timeout.
	errNotSent = errors.New("client: not connected to NATS, request not sent")
)

type lostRotation struct{}

func (*lostRotation) Error() string {
	return "client: the refresh token was rotated but the reply was lost (invalid_grant)"
}

func (*lostRotation) Is(target error) bool { return target == ErrInvalidGrant }

// Terminal reports whether err means the session's token family is gone
// for good, so the user must sign in again: invalid_grant (expired, revoked,
// replayed, another client's), invalid_request (the stored token or client
// id is malformed: it will never succeed), invalid_client, ErrNoSession,
// ErrLostRotation. A terminal error is never transient.
func Terminal(err error) bool {
	return errors.Is(err, ErrInvalidGrant) || errors.Is(err, ErrInvalidRequest) || errors.Is(err, ErrInvalidClient) ||
		errors.Is(err, ErrNoSession)
}

// Transient reports whether err may go away if the same request is made
// again later, so a user must not be signed out for it: a timeout, no
// responder, a closed or reconnecting connection, temporarily_unavailable,
// server_error, an unavailable session store. context.Canceled is not
// transient: the caller gave up.
func Transient(err error) bool {
	if err == nil || Terminal(err) {
		return false
	}
	for _, t := range []error{ErrTemporarilyUnavailable, ErrServerError, ErrStoreUnavailable, errNotSent,
		nats.ErrNoResponders, nats.ErrTimeout, context.DeadlineExceeded,
		nats.ErrConnectionClosed, nats.ErrDisconnected, nats.ErrConnectionReconnecting,
		nats.ErrReconnectBufExceeded, nats.ErrConnectionDraining} {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// notDelivered reports whether err proves a request never reached tokend,
// so tokend cannot have acted on it. A timeout or a connection lost while
// waiting proves nothing: the request may have been handled and its reply
// lost.
func notDelivered(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, errNotSent) ||
		errors.Is(err, nats.ErrReconnectBufExceeded) || errors.Is(err, nats.ErrConnectionDraining)
}

// RetryAfter returns tokend's back-off hint (retry_after_ms) carried by err,
// 0 if none.
func RetryAfter(err error) time.Duration {
	var e *Error
	if errors.As(err, &e) {
		return e.RetryAfter()
	}
	return 0
}

// IsRetryable is Transient, under its earlier name.
//
// Deprecated: use Transient.
func IsRetryable(err error) bool { return Transient(err) }
