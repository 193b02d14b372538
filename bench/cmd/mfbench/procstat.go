package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports (the kernel fixes it for the
// ABI, whatever CONFIG_HZ is).
const clockTicks = 100

// procTimes are a process's CPU times in seconds.
type procTimes struct {
	PPID     int
	User     float64 // utime
	System   float64 // stime
	Children float64 // cutime + cstime: reaped children
}

// readProc reads /proc/PID/stat. The command name may hold spaces and
// parentheses, so fields are counted after the last ')'.
func readProc(pid int) (procTimes, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procTimes{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): utime is field 14, so f[11].
	if len(f) < 15 {
		return procTimes{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	n := func(s string) float64 {
		v, _ := strconv.ParseUint(s, 10, 64)
		return float64(v) / clockTicks
	}
	ppid, _ := strconv.Atoi(f[1])
	return procTimes{PPID: ppid, User: n(f[11]), System: n(f[12]), Children: n(f[13]) + n(f[14])}, nil
}

// cpuSeconds is a process's own user+system time.
func cpuSeconds(pid int) float64 {
	t, err := readProc(pid)
	if err != nil {
		return 0
	}
	return t.User + t.System
}

// treeCPUSeconds is the CPU time of a server that forks workers
// (PostgreSQL): the parent, its live children, and the children it has
// already reaped.
func treeCPUSeconds(root int) float64 {
	t, err := readProc(root)
	if err != nil {
		return 0
	}
	total := t.User + t.System + t.Children
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil || pid == root {
			continue
		}
		c, err := readProc(pid)
		if err == nil && c.PPID == root {
			total += c.User + c.System
		}
	}
	return total
}

// memory is a process's resident set, in bytes.
type memory struct {
	HWM int64 `json:"hwm_bytes"` // VmHWM: peak resident set
	RSS int64 `json:"rss_bytes"` // VmRSS: resident set now
}

func readMemory(pid int) memory {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memory{}
	}
	defer f.Close()
	var m memory
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmHWM":
			m.HWM = kb * 1024
		case "VmRSS":
			m.RSS = kb * 1024
		}
	}
	return m
}

// mib converts bytes to MiB for reports.
func mib(b int64) float64 { return float64(b) / (1 << 20) }

// machineBusy is the CPU time, in seconds over all CPUs, the machine spent
// doing anything but idling since boot (/proc/stat: user, nice, system,
// irq, softirq, steal).
func machineBusy() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy uint64
	for i, v := range f[1:9] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, _ := strconv.ParseUint(v, 10, 64)
		busy += n
	}
	return float64(busy) / clockTicks
}
