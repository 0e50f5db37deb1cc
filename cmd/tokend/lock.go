package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// lockFileName is the lock inside --data-dir.
const lockFileName = "tokend.lock"

// lockDataDir takes an exclusive lock on dir for this process, so two
// tokend processes never share one store and read model (both would
// acknowledge writes with the same sequences, and one's would be lost).
// The lock is an flock on dir/tokend.lock holding the owner's PID; the
// kernel releases it when the process dies, however it dies.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder, _ := os.ReadFile(path)
			return nil, fmt.Errorf("data dir %s is in use by another tokend (pid %s); give each instance its own --data-dir",
				dir, pidOrUnknown(holder))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, nil
}

func pidOrUnknown(content []byte) string {
	if pid, err := strconv.Atoi(string(bytes.TrimSpace(content))); err == nil && pid > 0 {
		return strconv.Itoa(pid)
	}
	return "unknown"
}
