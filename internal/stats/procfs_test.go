package stats

import "os"

// runtimeHasProcfs reports whether the process collector can read /proc.
func runtimeHasProcfs() bool {
	_, err := os.Stat("/proc/self/stat")
	return err == nil
}
