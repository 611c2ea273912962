package backend

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sysBlock is where sysfs lists block devices by device number.
const sysBlock = "/sys/dev/block"

// queueDir returns the sysfs queue directory of block device dev, or "" if
// there is none (dev is not a block device, or sysfs is not mounted). A
// partition has no queue of its own; its limits are those of its disk, one
// directory up. The path is not cleaned: "MAJ:MIN/.." must be resolved by
// the kernel, through the symbolic link.
func queueDir(dev uint64) string {
	d := fmt.Sprintf("%s/%d:%d", sysBlock, unix.Major(dev), unix.Minor(dev))
	for _, q := range []string{d + "/queue", d + "/../queue"} {
		if fi, err := os.Stat(q); err == nil && fi.IsDir() {
			return q
		}
	}
	return ""
}

// readSysfsUint returns the unsigned number in file name of directory dir,
// or 0 if dir is "" or the file is missing or unreadable.
func readSysfsUint(dir, name string) uint64 {
	if dir == "" {
		return 0
	}
	data, err := os.ReadFile(dir + "/" + name)
	if err != nil {
		return 0
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return 0
	}
	return v
}
