package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/tokend/tokend/api/apitest"
	"github.com/tokend/tokend/events/eventstest"
)

// accessTTL is short so that the test sees tokens expire, and long enough
// that five tabs loading together all arrive before the rotated token is
// due for renewal (half its lifetime), which would be a second rotation.
const accessTTL = 4 * time.Second

// TestBrowser drives the demo in headless Chromium: sign in through the
// form; once the access token expired, five tabs load the profile page at
// once and are served by one rotation, nobody signed out; after the family
// is revoked with tokenctl, the next load (once the token the session holds
// expired) shows the sign-in page. Signed in again, the sign-out button is
// on the first screen of a desktop and a phone; during a tokend outage the
// page says the session is kept, and it is; then signing out works.
func TestBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("this test drives Chromium, which is not installed: run make test, whose deps target installs Debian's chromium")
	}
	tokenctl := buildTokenctl(t)
	td := apitest.Start(t, apitest.Options{AccessTTL: accessTTL})
	base := startBFF(t, td)
	browser := startBrowser(t, chromium)

	if p := load(t, browser, base+"/"); p.Page != "signin" || p.Path != "/signin" {
		t.Fatalf("without a session: %+v", p)
	}
	if p := signIn(t, browser, "guess", chromedp.CSS(".error")); p.Page != "signin" {
		t.Fatalf("after a wrong password: %+v", p)
	}
	signedIn := signIn(t, browser, "wonderland", chromedp.ID("family"))
	if signedIn.Page != "profile" || signedIn.User != "alice" || signedIn.Family == "" {
		t.Fatalf("after signing in: %+v", signedIn)
	}
	family := signedIn.Family
	if n := apitest.Count(td.Events(t, family), "token.rotated"); n != 0 {
		t.Fatalf("%d rotations before the token expired", n)
	}

	// Open the tabs first, so that their loads start together.
	tabs := make([]context.Context, 5)
	for i := range tabs {
		var cancel context.CancelFunc
		tabs[i], cancel = chromedp.NewContext(browser)
		t.Cleanup(cancel)
		if err := chromedp.Do(tabs[i]); err != nil {
			t.Fatalf("opening tab %d: %v", i, err)
		}
	}
	waitPast(t, signedIn.expiry(t))
	pages := make([]page, len(tabs))
	errs := make([]error, len(tabs))
	var wg sync.WaitGroup
	for i, tab := range tabs {
		// One URL per tab: Chromium's HTTP cache would hold back loads of
		// one URL until the first one's answer came.
		wg.Go(func() { pages[i], errs[i] = visit(tab, fmt.Sprintf("%s/?tab=%d", base, i)) })
	}
	wg.Wait()
	for i, p := range pages {
		if errs[i] != nil {
			t.Fatalf("tab %d: %v", i, errs[i])
		}
		if p.Page != "profile" || p.User != "alice" || p.Family != family {
			t.Fatalf("tab %d was not served the signed-in page: %+v", i, p)
		}
		if p.Expiry != pages[0].Expiry || p.Expiry == signedIn.Expiry {
			t.Fatalf("tab %d shows a token expiring at %s, tab 0 at %s, the expired one at %s", i, p.Expiry,
				pages[0].Expiry, signedIn.Expiry)
		}
	}
	evs := td.Events(t, family)
	if apitest.Count(evs, "token.rotated") != 1 || apitest.Count(evs, "token.reused") != 0 ||
		apitest.Count(evs, "family.revoked") != 0 {
		t.Fatalf("five tabs: want one rotation and nothing else, got %+v", evs)
	}

	out, err := exec.Command(tokenctl(), "revoke", "--family", family, "--nats-url", td.URL()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "revoked_families") {
		t.Fatalf("tokenctl revoke: %v: %s", err, out)
	}
	// The session learns of the revocation at its next refresh: once the
	// access token it holds has expired.
	waitPast(t, pages[0].expiry(t))
	if p := load(t, browser, base+"/"); p.Page != "signin" || p.Path != "/signin" {
		t.Fatalf("after the revocation: %+v", p)
	}
	noCookie(t, browser, base)
	if evs := td.Events(t, family); apitest.Count(evs, "refresh.rejected") != 1 || apitest.Count(evs, "token.rotated") != 1 {
		t.Fatalf("after the revocation: %+v", evs)
	}

	again := signIn(t, browser, "wonderland", chromedp.ID("family"))
	if again.Page != "profile" || again.Family == family {
		t.Fatalf("signing in again: %+v", again)
	}
	wantSignOutOnScreen(t, browser, base+"/", 390, 844)
	wantSignOutOnScreen(t, browser, base+"/", 1200, 800)

	// An outage once the access token expired: 503, and the page tells the
	// signed-in user so; when tokend is back, the same session goes on.
	waitPast(t, read(t, browser).expiry(t))
	td.StopNATS()
	resp, err := chromedp.RunResponse(browser, chromedp.Navigate(base+"/"))
	if err != nil {
		t.Fatalf("loading during the outage: %v", err)
	}
	text, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil || resp.Status != 503 || !strings.Contains(text, "You are still signed in") || !strings.Contains(text, "session is kept") {
		t.Fatalf("during the outage: %d %q (%v)", resp.Status, text, err)
	}
	td.StartNATS()
	eventstest.CheckFor(t, 30*time.Second, 200*time.Millisecond, func() error {
		if p := load(t, browser, base+"/"); p.Page != "profile" || p.Family != again.Family {
			return fmt.Errorf("after the outage: %+v", p)
		}
		return nil
	})

	// Signing out revokes the new session's family.
	if err := chromedp.Do(browser, chromedp.Click(chromedp.ID("signout")), chromedp.WaitVisible(chromedp.ID("signin"))); err != nil {
		t.Fatalf("signing out: %v", err)
	}
	noCookie(t, browser, base)
	evs = td.Events(t, again.Family)
	if last := evs[len(evs)-1]; last.Type != "family.revoked" || last.Reason != "signed_out" {
		t.Fatalf("after signing out: %+v", evs)
	}
}

// wantSignOutOnScreen loads url in a w×h viewport and checks that the
// sign-out button lies wholly on the first screen, unscrolled, and is what
// a click on its centre hits.
func wantSignOutOnScreen(t *testing.T, tab context.Context, url string, w, h int64) {
	t.Helper()
	if err := chromedp.Do(tab, chromedp.EmulateViewport(w, h), chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("signout"))); err != nil {
		t.Fatalf("loading %s at %dx%d: %v", url, w, h, err)
	}
	type box struct {
		Left, Top, Right, Bottom, Width, Height, ScrollY float64
		Hit                                              bool
	}
	b, err := chromedp.Run(tab, chromedp.Evaluate[box](`(() => {
		const b = document.getElementById("signout"), r = b.getBoundingClientRect();
		return {Left: r.left, Top: r.top, Right: r.right, Bottom: r.bottom, Width: innerWidth, Height: innerHeight,
			ScrollY: scrollY, Hit: document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2) === b};
	})()`))
	if err != nil {
		t.Fatal(err)
	}
	if b.Width != float64(w) || b.Height != float64(h) || b.ScrollY != 0 || b.Left < 0 || b.Top < 0 || b.Right > b.Width || b.Bottom > b.Height || !b.Hit {
		t.Fatalf("at %dx%d the sign-out button is not wholly on the first screen: %+v", w, h, b)
	}
}

// signIn submits the sign-in form with alice and password, waits for sel
// on the page that answers, and returns that page.
func signIn[S chromedp.Selectable](t *testing.T, browser context.Context, password string, sel S) page {
	t.Helper()
	err := chromedp.Do(browser,
		chromedp.SetValue(chromedp.ID("user"), "alice"),
		chromedp.SetValue(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("submit")),
		chromedp.WaitVisible(sel))
	if err != nil {
		t.Fatalf("signing in: %v", err)
	}
	return read(t, browser)
}

// noCookie checks that the browser holds no session cookie for base.
func noCookie(t *testing.T, browser context.Context, base string) {
	t.Helper()
	cookies, err := chromedp.Call(browser, network.GetCookies, network.GetCookiesParams{URLs: []string{base}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cookies.Cookies {
		if c.Name == "bff_demo_session" {
			t.Fatal("the session cookie outlived the session")
		}
	}
}

// buildTokenctl builds tokenctl in the background; the function returned
// waits for it and returns its path.
func buildTokenctl(t *testing.T) func() string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokenctl")
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		defer close(done)
		out, err = exec.Command("go", "build", "-o", path, "github.com/tokend/tokend/cmd/tokenctl").CombinedOutput()
	}()
	t.Cleanup(func() { <-done }) // before the directory is removed
	return func() string {
		t.Helper()
		<-done
		if err != nil {
			t.Fatalf("building tokenctl: %v: %s", err, out)
		}
		return path
	}
}

// startBFF runs the demo, as main does, on td; it returns its URL.
func startBFF(t *testing.T, td *apitest.Tokend) string {
	t.Helper()
	return startBFFWith(t, td, config{})
}

// startBFFWith is startBFF with cfg's flags; its NATS URL and issuer are
// td's.
func startBFFWith(t *testing.T, td *apitest.Tokend, cfg config) string {
	t.Helper()
	cfg.natsURL, cfg.issuer = td.URL(), td.Options().Issuer
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, cfg, ln, slog.New(slog.NewTextHandler(&logs, nil)))
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("bff: %v", err)
		}
		if t.Failed() {
			t.Logf("bff logs:\n%s", logs.String())
		}
	})
	return "http://" + ln.Addr().String()
}

// startBrowser starts headless Chromium and returns the context of its
// first tab. The whole test gets two minutes, however it goes.
func startBrowser(t *testing.T, chromium string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true))
	// chromedp gives the browser a fresh --user-data-dir and removes it.
	limit, cancelLimit := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancelLimit)
	alloc, cancelAlloc := chromedp.NewExecAllocator(limit, opts...)
	t.Cleanup(cancelAlloc)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(cancelBrowser)
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("starting %s: %v", chromium, err)
	}
	return browser
}

// page is what a page of the demo shows.
type page struct {
	Page   string `json:"page"` // body's data-page: signin or profile
	Path   string `json:"path"`
	User   string `json:"user"`
	Family string `json:"family"`
	Expiry string `json:"expiry"` // of the session's access token, as rendered by the server
}

func (p page) expiry(t *testing.T) time.Time {
	t.Helper()
	exp, err := time.Parse(time.RFC3339Nano, p.Expiry)
	if err != nil {
		t.Fatalf("expiry %q: %v", p.Expiry, err)
	}
	return exp
}

const readPage = `(() => {
	const text = id => document.getElementById(id)?.textContent ?? "";
	return {page: document.body?.dataset.page ?? "", path: location.pathname,
		user: document.body?.dataset.page === "profile" ? text("user") : "", family: text("family"),
		expiry: document.getElementById("expiry")?.getAttribute("datetime") ?? ""};
})()`

func visit(tab context.Context, url string) (page, error) {
	if err := chromedp.Do(tab, chromedp.Navigate(url)); err != nil {
		return page{}, err
	}
	return chromedp.Run(tab, chromedp.Evaluate[page](readPage))
}

func load(t *testing.T, tab context.Context, url string) page {
	t.Helper()
	p, err := visit(tab, url)
	if err != nil {
		t.Fatalf("loading %s: %v", url, err)
	}
	return p
}

func read(t *testing.T, tab context.Context) page {
	t.Helper()
	p, err := chromedp.Run(tab, chromedp.Evaluate[page](readPage))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// waitPast waits until the clock has passed at.
func waitPast(t *testing.T, at time.Time) {
	t.Helper()
	if time.Until(at) > time.Minute {
		t.Fatalf("expiry %s is not soon", at)
	}
	for time.Now().Before(at) {
		time.Sleep(50 * time.Millisecond)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
