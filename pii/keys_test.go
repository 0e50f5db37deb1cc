package pii

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func testKeys(t *testing.T, deploymentKey string) *Keys {
	t.Helper()
	k, err := NewKeys([]byte(deploymentKey))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const deploymentKey = "0123456789abcdef0123456789abcdef-test"

func TestPseudonymStableAndKeyed(t *testing.T) {
	a, b := testKeys(t, deploymentKey), testKeys(t, deploymentKey)
	p := a.Pseudonym("alice")
	if p != b.Pseudonym("alice") {
		t.Fatalf("same key, same subject: %q and %q", p, b.Pseudonym("alice"))
	}
	if !strings.HasPrefix(p, "p:") || len(p) != 2+22 {
		t.Fatalf("pseudonym %q: want p: and 22 characters (128 bits)", p)
	}
	if !validBucketKey(bucketKey(p)) {
		t.Fatalf("pseudonym %q is not a valid bucket key", p)
	}
	if p == a.Pseudonym("bob") {
		t.Fatal("two subjects share a pseudonym")
	}
	if p == testKeys(t, deploymentKey+"x").Pseudonym("alice") {
		t.Fatal("another deployment key gives the same pseudonym: it is not keyed")
	}
}

func TestLoadDeploymentKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return path
	}
	key, err := LoadDeploymentKey(write("good", " "+deploymentKey+"\n", 0o600))
	if err != nil || string(key) != deploymentKey {
		t.Fatalf("good key: %q, %v", key, err)
	}
	if _, err := LoadDeploymentKey(write("short", strings.Repeat("k", 31)+"\n", 0o600)); err == nil || !strings.Contains(err.Error(), "at least 32 bytes") {
		t.Fatalf("31-byte key: %v; want refused", err)
	}
	if _, err := LoadDeploymentKey(write("open", deploymentKey, 0o604)); err == nil || !strings.Contains(err.Error(), "other users") {
		t.Fatalf("world-readable key: %v; want refused", err)
	}
	if _, err := LoadDeploymentKey(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("missing file: no error")
	}
}
