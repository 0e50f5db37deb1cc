package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/client"
)

// The demo's one user, and what its sign-in asks tokend for. A real BFF
// checks the password (or asks an identity provider) where signIn does.
const (
	demoUser     = "alice"
	demoPassword = "wonderland"
	clientID     = "bff-demo"
	scope        = "profile api:read"
)

//go:embed templates/*.html
var templates embed.FS

var pages = template.Must(template.ParseFS(templates, "templates/*.html"))

// app is the BFF: its pages, and the demo API beside them.
type app struct {
	c        *client.Client
	sessions *client.Sessions
	api      *api
	apiURL   string
	log      *slog.Logger
	dpop     bool // each session's family bound to a DPoP key of its own
}

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /signin", func(w http.ResponseWriter, r *http.Request) {
		a.render(w, http.StatusOK, "signin.html", signInPage{})
	})
	mux.HandleFunc("POST /signin", a.signIn)
	mux.HandleFunc("POST /signout", a.signOut)
	mux.Handle("GET /{$}", a.sessions.Middleware(http.HandlerFunc(a.profile)))
	mux.HandleFunc("GET /api/me", a.api.me)
	// Forms are posted from this site's own pages only: with the SameSite
	// cookie, that is the defense against cross-site request forgery.
	return http.NewCrossOriginProtection().Handler(mux)
}

type signInPage struct {
	User, Error string
}

// signIn checks the demo password, issues a token family for the user and
// starts the session: from here on the browser holds the cookie only.
func (a *app) signIn(w http.ResponseWriter, r *http.Request) {
	user, password := r.PostFormValue("user"), r.PostFormValue("password")
	if user != demoUser || subtle.ConstantTimeCompare([]byte(password), []byte(demoPassword)) != 1 {
		a.render(w, http.StatusUnauthorized, "signin.html", signInPage{User: user, Error: "Wrong user or password."})
		return
	}
	ip, _, _ := net.SplitHostPort(r.RemoteAddr)
	ua := r.UserAgent()
	ua = ua[:min(len(ua), 256)] // tokend bounds the audit context
	req := wire.IssueRequest{Subject: user, ClientID: clientID, Scope: scope,
		Audience: []string{a.apiURL}, Context: map[string]string{"ip": ip, "user_agent": ua}}
	var key *client.DPoP
	var err error
	if a.dpop {
		// A real authorization server binds the family to the key whose
		// proof it verified at its code exchange; here the BFF is the
		// client and makes the key itself.
		key, err = client.NewDPoP(nil)
		if err == nil {
			req.DPoPJKT = key.JKT()
		}
	}
	var issued wire.TokenReply
	if err == nil {
		issued, err = a.c.Issue(r.Context(), req)
	}
	switch {
	case err != nil:
	case key != nil:
		err = a.sessions.StartDPoP(w, r, issued, key)
	default:
		err = a.sessions.Start(w, r, issued)
	}
	if err != nil {
		a.log.Error("sign-in", "err", err)
		a.render(w, http.StatusServiceUnavailable, "signin.html",
			signInPage{User: user, Error: "Could not sign you in: is tokend running? Try again."})
		return
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

type profilePage struct {
	Me     identity
	Expiry time.Time     // of the access token, as the session sees it
	Left   time.Duration // until then
	APIURL string
}

// profile asks the API who the user is, with the session's access token.
func (a *app) profile(w http.ResponseWriter, r *http.Request) {
	at, _ := client.AccessTokenFrom(r.Context())
	key, _ := client.DPoPFrom(r.Context())
	me, err := a.callAPI(r.Context(), at, key)
	if err != nil {
		a.log.Warn("calling the API", "err", err)
		http.Error(w, "The API failed: "+err.Error(), http.StatusBadGateway)
		return
	}
	a.render(w, http.StatusOK, "profile.html", profilePage{Me: me, Expiry: at.Expiry,
		Left: time.Until(at.Expiry).Round(time.Second), APIURL: a.apiURL})
}

var apiClient = &http.Client{Timeout: 5 * time.Second}

// callAPI calls the API with at, and a proof by key if at is bound to it.
func (a *app) callAPI(ctx context.Context, at client.AccessToken, key *client.DPoP) (identity, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.apiURL+"/me", nil)
	if err != nil {
		return identity{}, err
	}
	if key != nil {
		err = key.Authorize(req, at)
	} else {
		req.Header.Set("Authorization", "Bearer "+at.Token)
	}
	if err != nil {
		return identity{}, err
	}
	resp, err := apiClient.Do(req)
	if err != nil {
		return identity{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return identity{}, fmt.Errorf("the API answered %s", resp.Status)
	}
	var me identity
	return me, json.NewDecoder(resp.Body).Decode(&me)
}

// signOut revokes the session's family and clears the cookie.
func (a *app) signOut(w http.ResponseWriter, r *http.Request) {
	if err := a.sessions.SignOut(w, r); err != nil {
		a.log.Warn("sign-out", "err", err)
		http.Error(w, "Could not sign you out: the sign-in service is not answering. You are still signed in; go back and try again in a moment.",
			http.StatusServiceUnavailable)
		return
	}
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
}

func (a *app) render(w http.ResponseWriter, status int, name string, data any) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, data); err != nil {
		a.log.Error("rendering "+name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
