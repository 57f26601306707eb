package main

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc/grpclog"
)

// The values -log-format takes.
const (
	logFormatText = "text"
	logFormatJSON = "json"
)

// logLevels are the values -log-level takes, most verbose first.
var logLevels = []string{"trace", "debug", "info", "warn", "error"}

// logFlags are -log-level and -log-format, shared by `coffer server` and
// `coffer agent`.
type logFlags struct {
	level, format string
}

// addLogFlags defines -log-level and -log-format on f.
func addLogFlags(f *cmdFlags) *logFlags {
	l := &logFlags{}
	f.fs.StringVar(&l.level, "log-level", "info", "log level: "+strings.Join(logLevels, ", "))
	f.fs.StringVar(&l.format, "log-format", logFormatText, "log format: text (one human-readable line per event) or json (one JSON object per line)")
	return l
}

// logSettings is how a process logs, checked.
type logSettings struct {
	level hclog.Level
	json  bool
}

// parseLogSettings checks a level and a format; src names where they came
// from in the error ("-log-level", "log_level in -config").
func parseLogSettings(level, levelSrc, format, formatSrc string) (logSettings, error) {
	var s logSettings
	lv := strings.ToLower(strings.TrimSpace(level))
	if !slices.Contains(logLevels, lv) {
		return s, &cliError{code: 1, msg: fmt.Sprintf("invalid %s %q: want %s", levelSrc, level, strings.Join(logLevels, ", "))}
	}
	s.level = hclog.LevelFromString(lv)
	switch strings.ToLower(strings.TrimSpace(format)) {
	case logFormatText:
	case logFormatJSON:
		s.json = true
	default:
		return s, &cliError{code: 1, msg: fmt.Sprintf("invalid %s %q: want %s or %s", formatSrc, format, logFormatText, logFormatJSON)}
	}
	return s, nil
}

// newLogger is the process's root logger, writing to out. Every logger of
// the process derives from it, so fields given here (the node id) appear
// on every line.
func (s logSettings) newLogger(out io.Writer, fields ...any) hclog.Logger {
	l := hclog.New(&hclog.LoggerOptions{
		Name:       "coffer",
		Level:      s.level,
		Output:     out,
		JSONFormat: s.json,
	})
	if len(fields) > 0 {
		l = l.With(fields...)
	}
	return l
}

// endInLog returns err as the last line of a JSON log: logged at error
// level and returned as a silent exit with err's code, so that a JSON log
// stays one JSON object per line to its end. A text log keeps the usual
// one-line "Error: ..." on stderr.
func (s logSettings) endInLog(logger hclog.Logger, err error) error {
	if err == nil || !s.json {
		return err
	}
	var se silentExit
	if errors.As(err, &se) {
		return err
	}
	code := 1
	var ce *cliError
	if errors.As(err, &ce) && ce.code != 0 {
		code = ce.code
	}
	logger.Error("exiting", "error", oneLine(err.Error()))
	return silentExit(code)
}

// captureOnce guards the process-global loggers captureGlobalLogs sets.
var captureOnce sync.Once

// captureGlobalLogs routes what libraries write through the standard
// library's log package and through gRPC's logger into root, so that
// every line of the process has its fields and format. They are process
// globals, set before any gRPC call, and only when the command owns the
// process (not in tests that run commands in-process).
func captureGlobalLogs(e *env, root hclog.Logger) {
	if !e.process {
		return
	}
	captureOnce.Do(func() {
		std := root.Named("stdlog").StandardWriter(&hclog.StandardLoggerOptions{InferLevels: true})
		log.SetFlags(0)
		log.SetPrefix("")
		log.SetOutput(std)
		grpclog.SetLoggerV2(grpcLogger{root.Named("grpc")})
	})
}

// grpcLogger is gRPC's logger over hclog. gRPC's info lines (connection
// churn, off in gRPC's own default) go to trace; its warnings and errors keep their level.
type grpcLogger struct{ l hclog.Logger }

var _ grpclog.LoggerV2 = grpcLogger{}

func (g grpcLogger) Info(args ...any) {
	if g.l.IsTrace() {
		g.l.Trace(fmt.Sprint(args...))
	}
}
func (g grpcLogger) Infoln(args ...any) {
	if g.l.IsTrace() {
		g.l.Trace(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
	}
}
func (g grpcLogger) Infof(format string, args ...any) {
	if g.l.IsTrace() {
		g.l.Trace(fmt.Sprintf(format, args...))
	}
}
func (g grpcLogger) Warning(args ...any) { g.l.Warn(fmt.Sprint(args...)) }
func (g grpcLogger) Warningln(args ...any) {
	g.l.Warn(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}
func (g grpcLogger) Warningf(format string, args ...any) { g.l.Warn(fmt.Sprintf(format, args...)) }
func (g grpcLogger) Error(args ...any)                   { g.l.Error(fmt.Sprint(args...)) }
func (g grpcLogger) Errorln(args ...any) {
	g.l.Error(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
}
func (g grpcLogger) Errorf(format string, args ...any) { g.l.Error(fmt.Sprintf(format, args...)) }

// Fatal* log at error level and exit, as gRPC's own logger does.
func (g grpcLogger) Fatal(args ...any) { g.l.Error(fmt.Sprint(args...)); os.Exit(1) }
func (g grpcLogger) Fatalln(args ...any) {
	g.l.Error(strings.TrimSuffix(fmt.Sprintln(args...), "\n"))
	os.Exit(1)
}
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.l.Error(fmt.Sprintf(format, args...))
	os.Exit(1)
}

// V reports whether gRPC's verbosity level l is on: never, as gRPC's
// default logger does unless told otherwise.
func (g grpcLogger) V(l int) bool { return false }
