package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
)

// ReadinessCheck returns nil when the instance can serve: NATS connected,
// the stream reachable and the read model close behind it.
type ReadinessCheck func(context.Context) error

// OpsHandler serves what operators and resource servers reach: health,
// readiness, the JWKS and, when given, metrics. With openAudit it also
// serves the audit API, unauthenticated, as contract v1 laid it out;
// otherwise /v1/ answers not_found, pointing to the audit listener.
func (s *Service) OpsHandler(ready ReadinessCheck, metrics http.Handler, openAudit bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ready(ctx); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", s.Access.JWKSCacheControl(s.Now()))
		w.Write(s.Access.JWKS())
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	if openAudit {
		mux.Handle("/v1/", s.AuditHandler())
	} else {
		mux.HandleFunc("/v1/", func(w http.ResponseWriter, _ *http.Request) {
			writeError(w, domain.Errorf(domain.ENotFound, "the audit API is served on the --audit-http listener"))
		})
	}
	return mux
}

// AuditHandler serves the audit API: GET /v1/audit and /v1/families/{id}.
// It authenticates nobody; the listener in front of it does (AuditGuard).
func (s *Service) AuditHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/audit", func(w http.ResponseWriter, r *http.Request) {
		in, err := auditRequestFromQuery(r.URL.Query())
		if err != nil {
			writeError(w, err)
			return
		}
		s.serveHTTP(w, r, "audit", func(ctx context.Context) (any, error) { return s.Audit(ctx, in) })
	})
	mux.HandleFunc("GET /v1/families/{id}", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		minSeq, err := uintParam(q, "min_seq")
		if err == nil {
			err = onlyParams(q, "min_seq")
		}
		if err != nil {
			writeError(w, err)
			return
		}
		in := wire.FamilyRequest{FamilyID: r.PathValue("id"), MinSeq: minSeq}
		s.serveHTTP(w, r, "family", func(ctx context.Context) (any, error) { return s.Family(ctx, in) })
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Subjects, addresses and user agents: no cache may keep them.
		w.Header().Set("Cache-Control", "no-store")
		mux.ServeHTTP(w, r)
	})
}

func (s *Service) serveHTTP(w http.ResponseWriter, r *http.Request, query string, handle func(context.Context) (any, error)) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	out, err := handle(ctx)
	s.Metrics.query(query, err, time.Since(start))
	s.handled.Add(1)
	if err != nil {
		s.logFailure(r.URL.Path, err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

var auditParams = []string{"family_id", "subject", "client_id", "presented_by", "type", "since", "until", "limit", "after_seq",
	"min_seq"}

// auditRequestFromQuery maps /v1/audit's parameters onto the NATS request,
// so both are validated alike.
func auditRequestFromQuery(q url.Values) (wire.AuditRequest, error) {
	if err := onlyParams(q, auditParams...); err != nil {
		return wire.AuditRequest{}, err
	}
	for _, single := range []string{"family_id", "subject", "client_id", "presented_by", "since", "until", "limit", "after_seq", "min_seq"} {
		if len(q[single]) > 1 {
			return wire.AuditRequest{}, domain.Errorf(domain.EInvalidRequest, "parameter %s given more than once", single)
		}
	}
	in := wire.AuditRequest{FamilyID: q.Get("family_id"), Subject: q.Get("subject"), ClientID: q.Get("client_id"),
		PresentedBy: q.Get("presented_by"), Types: q["type"], Since: q.Get("since"), Until: q.Get("until")}
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil {
			return in, domain.Errorf(domain.EInvalidRequest, "limit must be a number")
		}
		in.Limit = &n
	}
	var err error
	if in.AfterSeq, err = uintParam(q, "after_seq"); err != nil {
		return in, err
	}
	in.MinSeq, err = uintParam(q, "min_seq")
	return in, err
}

func uintParam(q url.Values, name string) (uint64, error) {
	if !q.Has(name) {
		return 0, nil
	}
	if len(q[name]) > 1 {
		return 0, domain.Errorf(domain.EInvalidRequest, "parameter %s given more than once", name)
	}
	n, err := strconv.ParseUint(q.Get(name), 10, 63)
	if err != nil {
		return 0, domain.Errorf(domain.EInvalidRequest, "%s must be a non-negative number", name)
	}
	return n, nil
}

func onlyParams(q url.Values, allowed ...string) error {
	for k := range q {
		known := false
		for _, a := range allowed {
			known = known || k == a
		}
		if !known {
			return domain.Errorf(domain.EInvalidRequest, "unknown parameter %q", truncate(k))
		}
	}
	return nil
}

func writeError(w http.ResponseWriter, err error) {
	body := errorReply(err)
	writeJSON(w, httpStatus(body.Error), body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
