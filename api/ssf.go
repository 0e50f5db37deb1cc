package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/signals"
)

// The SSF transmitter on the OAuth listener: its metadata (SSF 1.0
// section 7), the stream management API (section 8, ssfstream.go) and the
// poll endpoint of poll streams (RFC 8936, ssfpoll.go). Receivers call
// them with the access token of the client_credentials grant
// (OAuth.receiver): ssf.read to read, ssf.manage to change and to poll.
// A receiver sees its own streams only: any other stream id is answered
// as one that does not exist.

// Paths of the SSF transmitter.
const (
	PathSSFConfiguration  = "/.well-known/ssf-configuration"
	PathSSFStream         = "/ssf/stream"
	PathSSFStatus         = "/ssf/status"
	PathSSFSubjectsAdd    = "/ssf/subjects:add"
	PathSSFSubjectsRemove = "/ssf/subjects:remove"
	PathSSFVerify         = "/ssf/verify"
	// PathSSFPoll followed by a stream id is a poll stream's endpoint_url.
	PathSSFPoll = "/ssf/poll/"
)

// Poller answers RFC 8936 polls: signals.Engine, or a test's stand-in.
type Poller interface {
	// Poll answers a poll of stream s, which the caller checked is the
	// polling receiver's own poll stream: it applies req.Ack and
	// req.SetErrs and returns at most req.MaxEvents SETs. Unless
	// req.ReturnImmediately, it may wait for SETs until ctx is done (the
	// long poll's bound, the caller leaving, or shutdown), and then answers
	// with the SETs it has: none is an answer, not an error. Its errors
	// are *domain.Error (temporarily_unavailable when it cannot serve the
	// poll now); any other is answered server_error.
	Poll(ctx context.Context, s signals.Stream, req signals.PollRequest) (signals.PollResponse, error)
}

// VerificationInterval is every stream's min_verification_interval: a
// receiver asking for verification events more often is answered 429 (SSF
// 1.0 section 8.1.1). Each one is an event in the TOKENS stream, kept a
// day. Each instance keeps the interval itself (SSF lets a transmitter
// answer 429, never obliges it): behind a load balancer a receiver may get
// one per instance and interval, never a 429 it did not earn.
const VerificationInterval = 30 * time.Second

// maxVerifyingStreams bounds the streams whose last verification an
// instance remembers; a stream forgotten under pressure may verify again
// at once, which errs on the side of the receiver.
const maxVerifyingStreams = 65536

// maxSSFBody bounds a management request's body; the largest valid one, a
// stream with 32 event types, a long endpoint and authorization header, is
// a few KiB.
const maxSSFBody = 64 << 10

// ssfMetadata is the transmitter configuration metadata (SSF 1.0 section
// 7.1), with the fields the CAEP interoperability profile 1.0 requires.
type ssfMetadata struct {
	SpecVersion              string                `json:"spec_version"`
	Issuer                   string                `json:"issuer"`
	JWKSURI                  string                `json:"jwks_uri"`
	DeliveryMethodsSupported []string              `json:"delivery_methods_supported"`
	ConfigurationEndpoint    string                `json:"configuration_endpoint"`
	StatusEndpoint           string                `json:"status_endpoint"`
	AddSubjectEndpoint       string                `json:"add_subject_endpoint"`
	RemoveSubjectEndpoint    string                `json:"remove_subject_endpoint"`
	VerificationEndpoint     string                `json:"verification_endpoint"`
	AuthorizationSchemes     []authorizationScheme `json:"authorization_schemes"`
	DefaultSubjects          string                `json:"default_subjects"`
}

// authorizationScheme is SSF 1.0 section 7.1.1.
type authorizationScheme struct {
	SpecURN string `json:"spec_urn"`
}

// mountSSF adds the SSF transmitter's routes to mux.
func (o *OAuth) mountSSF(mux *http.ServeMux) {
	mux.HandleFunc("GET "+PathSSFConfiguration, o.ssfConfiguration)
	mux.HandleFunc("POST "+PathSSFStream, o.measured("ssf_config", o.createStream))
	mux.HandleFunc("GET "+PathSSFStream, o.measured("ssf_config", o.readStreams))
	mux.HandleFunc("PATCH "+PathSSFStream, o.measured("ssf_config", o.updateStream))
	mux.HandleFunc("PUT "+PathSSFStream, o.measured("ssf_config", o.replaceStream))
	mux.HandleFunc("DELETE "+PathSSFStream, o.measured("ssf_config", o.deleteStream))
	mux.HandleFunc("GET "+PathSSFStatus, o.measured("ssf_status", o.readStatus))
	mux.HandleFunc("POST "+PathSSFStatus, o.measured("ssf_status", o.updateStatus))
	mux.HandleFunc("POST "+PathSSFSubjectsAdd, o.measured("ssf_subjects", o.addSubject))
	mux.HandleFunc("POST "+PathSSFSubjectsRemove, o.measured("ssf_subjects", o.removeSubject))
	mux.HandleFunc("POST "+PathSSFVerify, o.measured("ssf_verify", o.verifyStream))
	mux.HandleFunc("POST "+PathSSFPoll+"{stream_id}", o.measured("ssf_poll", o.poll))
}

// ssfConfiguration is the transmitter configuration metadata: public, the
// same for everyone, and cacheable like RFC 8414's.
func (o *OAuth) ssfConfiguration(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Cache-Control", "public, max-age=300")
	writeJSON(w, http.StatusOK, ssfMetadata{
		SpecVersion:              "1_0",
		Issuer:                   o.issuer,
		JWKSURI:                  o.issuer + PathJWKS,
		DeliveryMethodsSupported: signals.DeliveryMethods,
		ConfigurationEndpoint:    o.issuer + PathSSFStream,
		StatusEndpoint:           o.issuer + PathSSFStatus,
		AddSubjectEndpoint:       o.issuer + PathSSFSubjectsAdd,
		RemoveSubjectEndpoint:    o.issuer + PathSSFSubjectsRemove,
		VerificationEndpoint:     o.issuer + PathSSFVerify,
		AuthorizationSchemes:     []authorizationScheme{{SpecURN: "urn:ietf:rfc:6749"}},
		DefaultSubjects:          "ALL",
	})
}

// ssfAnswer is what an SSF handler answers: status and body (nil: none).
type ssfAnswer struct {
	status int
	body   any
}

// measured serves an SSF endpoint with handle, counting it under endpoint
// in the OAuth request metrics, and answers handle's error as answerSSF
// does.
func (o *OAuth) measured(endpoint string, handle func(http.ResponseWriter, *http.Request) (ssfAnswer, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		a, err := handle(w, r)
		err = ssfError(err)
		o.svc.Metrics.oauth(endpoint, err, time.Since(start))
		// Stream configurations, statuses and SETs are the receiver's own.
		noStore(w)
		if err != nil {
			o.answerSSF(w, endpoint, err)
			return
		}
		if a.body == nil {
			w.WriteHeader(a.status)
			return
		}
		writeJSON(w, a.status, a.body)
	}
}

// errNoStream answers a stream id that is not one of the caller's streams,
// whether or not it is another receiver's: the answer never tells.
var errNoStream = &oauthError{status: http.StatusNotFound, code: domain.ENotFound,
	description: "no stream with this stream_id for this receiver"}

// ssfError maps the stream store's errors to the SSF status codes.
func ssfError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, signals.ErrNotFound):
		return errNoStream
	case errors.Is(err, signals.ErrTooManyStreams):
		// SSF 1.0 section 8.1.1.1: 409 when the transmitter makes no more
		// streams for this receiver; it may read and change those it has.
		return &oauthError{status: http.StatusConflict, code: domain.EInvalidRequest, description: domain.ErrorMessage(err)}
	case errors.Is(err, signals.ErrRevisionChanged):
		// A delete raced another change (the delivery pausing the stream):
		// the receiver tries again.
		return &oauthError{status: http.StatusServiceUnavailable, code: domain.EUnavailable,
			description: "the stream changed while it was deleted, retry", retryAfter: time.Second, cause: err}
	}
	return err
}

// answerSSF answers an SSF request's error: a refused token as RFC 6750
// says, anything else as the other OAuth endpoints do.
func (o *OAuth) answerSSF(w http.ResponseWriter, endpoint string, err error) {
	var be *bearerError
	if errors.As(err, &be) {
		writeBearerError(w, err)
		return
	}
	o.answerError(w, endpoint, err)
}

// ssfContext bounds one management request.
func ssfContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), requestTimeout)
}

// decodeSSF reads a JSON request body of at most limit bytes into v:
// one JSON object, valid UTF-8, nothing after it; an empty body is {}. Members v does not have
// are ignored: SSF's objects grow members, and a receiver of a later
// version may send some (what each endpoint does with the members it
// knows is its own).
func decodeSSF(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return domain.Errorf(domain.EInvalidRequest, "the body is larger than %d bytes", limit)
	case err != nil:
		return domain.Errorf(domain.EInvalidRequest, "the body could not be read")
	case !utf8.Valid(data):
		return domain.Errorf(domain.EInvalidRequest, "the body is not valid UTF-8")
	}
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil // as {}: a create or a poll may well send nothing
	}
	if data[0] != '{' {
		return domain.Errorf(domain.EInvalidRequest, "the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return domain.Errorf(domain.EInvalidRequest, "the body is not the JSON object expected: %s", describeJSONError(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return domain.Errorf(domain.EInvalidRequest, "the body has data after its JSON object")
	}
	return nil
}

// streamIDParam returns the one stream_id of r's query.
func streamIDParam(r *http.Request) (string, error) {
	ids := r.URL.Query()["stream_id"]
	switch {
	case len(ids) > 1:
		return "", domain.Errorf(domain.EInvalidRequest, "stream_id given more than once")
	case len(ids) == 0 || ids[0] == "":
		return "", domain.Errorf(domain.EInvalidRequest, "stream_id is required")
	}
	return ids[0], nil
}

// receiverRequest authenticates a receiver's change (scope ssf.manage)
// and decodes its body into b.
func (o *OAuth) receiverRequest(w http.ResponseWriter, r *http.Request, b any) (domain.Client, error) {
	receiver, err := o.receiver(r, domain.ScopeSSFManage)
	if err != nil {
		return domain.Client{}, err
	}
	return receiver, decodeSSF(w, r, maxSSFBody, b)
}

// requireStreamID refuses a request body that names no stream.
func requireStreamID(id string) error {
	if id == "" {
		return domain.Errorf(domain.EInvalidRequest, "stream_id is required")
	}
	return nil
}

// ownStream reads stream id if it is receiver's: errNoStream otherwise.
func (o *OAuth) ownStream(ctx context.Context, r *http.Request, receiver domain.Client, id string) (signals.Stream, error) {
	if err := requireStreamID(id); err != nil {
		return signals.Stream{}, err
	}
	st, err := o.svc.Streams.Get(ctx, id)
	if err != nil {
		return signals.Stream{}, err
	}
	if err := o.owns(r, receiver, st); err != nil {
		return signals.Stream{}, err
	}
	return st, nil
}

// updateOwnStream changes stream id, if it is receiver's (else
// errNoStream), by change under compare-and-set (Store.Update).
func (o *OAuth) updateOwnStream(r *http.Request, receiver domain.Client, id string, change func(*signals.Stream) (bool, error)) (signals.Stream, error) {
	ctx, cancel := ssfContext(r)
	defer cancel()
	return o.svc.Streams.Update(ctx, id, 0, func(st *signals.Stream) (bool, error) {
		if err := o.owns(r, receiver, *st); err != nil {
			return false, err
		}
		return change(st)
	})
}

// owns checks that st is receiver's stream; another's is logged, for
// whoever watches for receivers probing, and answered errNoStream.
func (o *OAuth) owns(r *http.Request, receiver domain.Client, st signals.Stream) error {
	if st.Receiver == receiver.ID {
		return nil
	}
	o.log.Info("ssf request refused: the stream is not the receiver's",
		append([]any{"client_id", receiver.ID, "stream_id", st.ID}, logAddress(r)...)...)
	return errNoStream
}

// transmitter is what the deployment adds to the streams' configuration.
func (o *OAuth) transmitter() signals.Transmitter {
	return signals.Transmitter{Issuer: o.issuer, MinVerificationInterval: VerificationInterval,
		PollURL: func(id string) string { return o.issuer + PathSSFPoll + id }}
}

// configOf renders st for its receiver. The authorization_header of a push
// stream is write-only: it is the receiver's secret, and a token that
// reads the stream must not learn it.
func (o *OAuth) configOf(st signals.Stream) signals.Config {
	c := st.Config(o.transmitter())
	c.Delivery.AuthorizationHeader, c.Delivery.SecretRef = "", ""
	return c
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// mismatch is a transmitter-supplied member that does not match the
// stream's (SSF 1.0 sections 8.1.1.3 and 8.1.1.4: 400).
func mismatch(member string) error {
	return domain.Errorf(domain.EInvalidRequest, "%s does not match the stream's: transmitter-supplied members, if sent, must match", member)
}
