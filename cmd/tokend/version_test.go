package main

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/events/eventstest"
)

// TestVersionFlag: tokend --version prints the release and exits 0
// without starting anything, whatever the TOKEND_* variables hold.
func TestVersionFlag(t *testing.T) {
	t.Setenv("TOKEND_ACCESS_TTL", "soon")
	dataDir := filepath.Join(t.TempDir(), "data")
	var stdout, stderr strings.Builder
	if code := run([]string{"--version", "--data-dir", dataDir}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit status %d, stderr %q", code, stderr.String())
	}
	if got, want := stdout.String(), api.VersionLine("tokend")+"\n"; got != want || !strings.HasPrefix(got, "tokend "+api.Version+" ") {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if stderr.Len() > 0 {
		t.Errorf("stderr %q", stderr.String())
	}
	if _, err := os.Stat(dataDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("--version created the data directory: %v", err)
	}
}

// TestVersionIsReportedEverywhere: the metrics, service discovery and the
// ready log line name the same version as --version.
func TestVersionIsReportedEverywhere(t *testing.T) {
	logs := &syncBuffer{}
	app := MustApp(t, testConfig(t), logs)
	if got := parseMetrics(t, scrape(t, app)).value("tokend_build_info", "version", api.Version); got != 1 {
		t.Errorf("tokend_build_info{version=%q} = %v, want 1", api.Version, got)
	}
	nc := eventstest.MustConnect(t, app.NATSURL())
	msg, err := nc.Request("$SRV.INFO.tokens", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil || info.Version != api.Version {
		t.Errorf("service discovery reports version %q (%v), want %q", info.Version, err, api.Version)
	}
	if ready := `msg="tokend ready" version=` + api.Version; !strings.Contains(logs.String(), ready) {
		t.Errorf("logs lack %q:\n%s", ready, logs)
	}
}

// TestDocsMarkTheReleasedVersion: the docs mark what is new in a release as
// **X.Y**; the newest mark is the major and minor version tokend reports,
// so a binary never claims another release than the docs describe.
func TestDocsMarkTheReleasedVersion(t *testing.T) {
	release := regexp.MustCompile(`^(\d+)\.(\d+)\.\d+$`).FindStringSubmatch(api.Version)
	if release == nil {
		t.Fatalf("api.Version %q is not MAJOR.MINOR.PATCH", api.Version)
	}
	mark := regexp.MustCompile(`\*\*(\d+)\.(\d+)\*\*`)
	newest, where := [2]int{}, ""
	for _, doc := range []string{"../../README.md", "../../docs/protocol.md", "../../docs/operations.md"} {
		text, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mark.FindAllStringSubmatch(string(text), -1) {
			v := [2]int{atoi(t, m[1]), atoi(t, m[2])}
			if v[0] > newest[0] || v[0] == newest[0] && v[1] > newest[1] {
				newest, where = v, doc
			}
		}
	}
	if got := [2]int{atoi(t, release[1]), atoi(t, release[2])}; got != newest {
		t.Errorf("tokend reports %s, but %s marks features **%d.%d**", api.Version, where, newest[0], newest[1])
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
