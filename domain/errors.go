package domain

import (
	"errors"
	"fmt"
)

// Error codes, one per row of the contract's error table.
const (
	EInvalidRequest = "invalid_request"
	EInvalidGrant   = "invalid_grant"
	EInvalidScope   = "invalid_scope"
	EInvalidTarget  = "invalid_target"
	ENotFound       = "not_found"
	EUnavailable    = "temporarily_unavailable"
	EServerError    = "server_error"
	// EInvalidClient: the client is unknown to the client registry, or
	// failed to authenticate (OAuth over HTTP).
	EInvalidClient = "invalid_client"
	// EInvalidDPoPProof and EUseDPoPNonce are RFC 9449's (section 5 and
	// 8): a DPoP proof is missing, malformed or fails a check; or it must
	// carry the server's current nonce, which the answer gives.
	EInvalidDPoPProof = "invalid_dpop_proof"
	EUseDPoPNonce     = "use_dpop_nonce"
)

// Error is a failure with a contract error code. Message is safe to show to
// the caller; it never names which invalid_grant check failed.
type Error struct {
	Code    string
	Message string
	// RetryAfterMs, when set on EUnavailable, tells the caller when to retry.
	RetryAfterMs int64
	// RateLimited marks an EUnavailable that a rate limit decided, which
	// HTTP answers 429 rather than 503.
	RateLimited bool
	// DPoPNonce, set on EUseDPoPNonce, is the nonce the next proof must
	// carry (RFC 9449 section 8).
	DPoPNonce string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf returns an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// ErrorCode returns the contract code of err: the code of the first *Error in
// its chain, or EServerError for anything else (an unexpected failure is a bug).
func ErrorCode(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return EServerError
}

// ErrorMessage returns the caller-safe message of err.
func ErrorMessage(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Message
	}
	return "internal error"
}

// grantDescription is the one description every invalid_grant carries, so the
// reply is no oracle for which check failed.
const grantDescription = "refresh token is not valid"

// ErrInvalidGrant is the reply to every refused refresh token, whatever the cause.
var ErrInvalidGrant = &Error{Code: EInvalidGrant, Message: grantDescription}
