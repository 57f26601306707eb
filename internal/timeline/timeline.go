// Package timeline draws what a client load saw over time: the writes and
// reads that succeeded per second in fixed buckets (100 ms by default),
// the failed operations and the stale reads marked apart, and the faults
// injected as vertical lines where they began and ended. The chaos suite
// (integration/chaos) draws one picture per scenario with it, `coffer
// bench -timeline` one per run.
//
// A Series holds timed events; Buckets counts them, Render draws them as
// a PNG. Counting is separate from drawing so that it can be tested
// exactly; the picture is gonum.org/v1/plot's.
package timeline

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Kind tells a write from a read.
type Kind uint8

// The kinds of operations a series holds.
const (
	Write Kind = iota
	Read
)

// Outcome is how an operation ended.
type Outcome uint8

// The outcomes of an operation. A stale read succeeded with an answer
// that may miss committed writes (a stale read, a fallback, the client
// cache); it counts as a read and is marked too.
const (
	OK Outcome = iota
	Failed
	Stale
)

// Event is one operation, at the time it returned.
type Event struct {
	At      time.Time
	Kind    Kind
	Outcome Outcome
}

// Fault is an injected fault: a vertical line where it began and one
// where it ended (none when End is zero).
type Fault struct {
	Label      string
	Start, End time.Time
}

// DefaultBucket is the bucket width when Series.Bucket is zero.
const DefaultBucket = 100 * time.Millisecond

// The size of a picture when Render is given none, in pixels.
const (
	DefaultWidth  = 800
	DefaultHeight = 400
)

// Series is what a picture shows. The zero value of each field but Events
// means its default.
type Series struct {
	// Title is drawn above the plot.
	Title  string
	Events []Event
	Faults []Fault
	// Bucket is the width of a bucket (default DefaultBucket).
	Bucket time.Duration
	// From and To bound the picture, [From, To): events outside are left
	// out. Zero From: the first event; zero To: just after the last.
	From, To time.Time
}

// Bucket counts the events of one bucket, [Start, Start+width) after
// the series' origin.
type Bucket struct {
	Start time.Duration
	// Writes and Reads are the operations that succeeded, stale reads
	// included; StaleReads counts those apart.
	Writes, Reads             int
	FailedWrites, FailedReads int
	StaleReads                int
}

// Failed is the number of failed operations of the bucket.
func (b Bucket) Failed() int { return b.FailedWrites + b.FailedReads }

// Errors of Render.
var (
	ErrEmpty = errors.New("timeline: no event in the time range: nothing to draw")
	ErrSize  = errors.New("timeline: the picture's width and height must be 100 to 10000 pixels")
)

func (s Series) width() time.Duration {
	if s.Bucket <= 0 {
		return DefaultBucket
	}
	return s.Bucket
}

// span returns the series' time range [from, to), or ok false when it
// holds no event.
func (s Series) span() (from, to time.Time, ok bool) {
	from, to = s.From, s.To
	if from.IsZero() || to.IsZero() {
		var first, last time.Time
		for i, e := range s.Events {
			if i == 0 || e.At.Before(first) {
				first = e.At
			}
			if i == 0 || e.At.After(last) {
				last = e.At
			}
		}
		if len(s.Events) == 0 {
			return from, to, false
		}
		if from.IsZero() {
			from = first
		}
		if to.IsZero() {
			to = last.Add(time.Nanosecond)
		}
	}
	return from, to, to.After(from)
}

// Buckets counts the events by bucket, from the series' origin (From, or
// the first event) to its end: ceil((To-From)/Bucket) buckets, none when
// the range is empty.
func (s Series) Buckets() []Bucket {
	from, to, ok := s.span()
	if !ok {
		return nil
	}
	w := s.width()
	n := int((to.Sub(from) + w - 1) / w)
	out := make([]Bucket, n)
	for i := range out {
		out[i].Start = time.Duration(i) * w
	}
	for _, e := range s.Events {
		if e.At.Before(from) || !e.At.Before(to) {
			continue
		}
		b := &out[int(e.At.Sub(from)/w)]
		switch {
		case e.Outcome == Failed && e.Kind == Write:
			b.FailedWrites++
		case e.Outcome == Failed:
			b.FailedReads++
		case e.Kind == Write:
			b.Writes++
		default:
			b.Reads++
			if e.Outcome == Stale {
				b.StaleReads++
			}
		}
	}
	return out
}

// The colours of the picture.
var (
	writeColor  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff} // blue
	readColor   = color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff} // green
	failColor   = color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff} // red
	staleColor  = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff} // orange
	startColor  = color.RGBA{R: 0x44, G: 0x44, B: 0x44, A: 0xff}
	healedColor = color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff} // purple
)

// Render draws the series as a PNG of width × height pixels (0: the
// defaults): writes/s and reads/s as lines, failed operations per second
// as red crosses, stale reads per second as orange triangles, each
// fault's start and end as dashed vertical lines, the legend on the
// right. The x axis is seconds from the series' origin.
func (s Series) Render(out io.Writer, width, height int) error {
	if width == 0 {
		width = DefaultWidth
	}
	if height == 0 {
		height = DefaultHeight
	}
	if width < 100 || height < 100 || width > 10000 || height > 10000 {
		return ErrSize
	}
	from, to, ok := s.span()
	if !ok {
		return ErrEmpty
	}
	buckets := s.Buckets()
	w := s.width()
	perSec := 1 / w.Seconds()
	mid := func(b Bucket) float64 { return (b.Start + w/2).Seconds() }
	writes := make(plotter.XYs, len(buckets))
	reads := make(plotter.XYs, len(buckets))
	var failed, stale plotter.XYs
	top := 0.0
	for i, b := range buckets {
		writes[i] = plotter.XY{X: mid(b), Y: float64(b.Writes) * perSec}
		reads[i] = plotter.XY{X: mid(b), Y: float64(b.Reads) * perSec}
		if b.Failed() > 0 {
			failed = append(failed, plotter.XY{X: mid(b), Y: float64(b.Failed()) * perSec})
		}
		if b.StaleReads > 0 {
			stale = append(stale, plotter.XY{X: mid(b), Y: float64(b.StaleReads) * perSec})
		}
		top = max(top, writes[i].Y, reads[i].Y, float64(b.Failed())*perSec)
	}
	top = max(top*1.05, 10)
	ystep := niceStep(top / 5)
	top = math.Ceil(top/ystep) * ystep
	end := to.Sub(from).Seconds()

	p := plot.New()
	p.Title.Text = s.Title
	p.X.Label.Text = "seconds"
	p.Y.Label.Text = "operations per second (" + w.String() + " buckets)"
	p.X.Min, p.X.Max = 0, end
	p.Y.Min, p.Y.Max = 0, top
	p.X.Tick.Marker, p.Y.Tick.Marker = ticks(niceStep(end/8)), ticks(ystep)
	p.Add(plotter.NewGrid())
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true

	for _, l := range []struct {
		name string
		xys  plotter.XYs
		c    color.Color
	}{{"writes/s", writes, writeColor}, {"reads/s", reads, readColor}} {
		line, err := plotter.NewLine(l.xys)
		if err != nil {
			return fmt.Errorf("timeline: %w", err)
		}
		line.Color, line.Width = l.c, vg.Points(1.2)
		p.Add(line)
		legend.Add(l.name, line)
	}
	for _, m := range []struct {
		name  string
		xys   plotter.XYs
		c     color.Color
		glyph draw.GlyphDrawer
	}{{"failed ops/s", failed, failColor, draw.CrossGlyph{}}, {"stale reads/s", stale, staleColor, draw.TriangleGlyph{}}} {
		sc, err := plotter.NewScatter(m.xys)
		if err != nil {
			return fmt.Errorf("timeline: %w", err)
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: m.c, Radius: vg.Points(4), Shape: m.glyph}
		if len(m.xys) > 0 {
			p.Add(sc)
		}
		legend.Add(m.name, sc)
	}
	var startLine, endLine *plotter.Line
	for _, f := range s.Faults {
		for _, v := range []struct {
			at   time.Time
			c    color.Color
			dash []vg.Length
			keep **plotter.Line
		}{{f.Start, startColor, []vg.Length{vg.Points(5), vg.Points(3)}, &startLine}, {f.End, healedColor, []vg.Length{vg.Points(2), vg.Points(2)}, &endLine}} {
			if v.at.IsZero() || v.at.Before(from) || v.at.After(to) {
				continue
			}
			x := v.at.Sub(from).Seconds()
			line, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top}})
			if err != nil {
				return fmt.Errorf("timeline: %w", err)
			}
			line.Color, line.Width, line.Dashes = v.c, vg.Points(1.5), v.dash
			p.Add(line)
			*v.keep = line
		}
	}
	if startLine != nil {
		legend.Add("fault injected", startLine)
	}
	if endLine != nil {
		legend.Add("fault removed", endLine)
	}

	const dpi = 96
	c := vgimg.NewWith(vgimg.UseWH(vg.Length(width)*vg.Inch/dpi, vg.Length(height)*vg.Inch/dpi), vgimg.UseDPI(dpi))
	dc := draw.New(c)
	legendWidth := vg.Length(width) * vg.Inch / dpi * 0.17
	p.Draw(draw.Crop(dc, 0, -legendWidth, 0, 0))
	legend.Draw(draw.Crop(draw.Crop(dc, vg.Length(width)*vg.Inch/dpi-legendWidth+vg.Points(4), 0, 0, 0), 0, 0, 0, -vg.Points(20)))
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(out); err != nil {
		return fmt.Errorf("timeline: writing the PNG: %w", err)
	}
	return nil
}

// niceStep returns the smallest of 1, 2 or 5 times a power of ten that is
// at least x (x > 0).
func niceStep(x float64) float64 {
	if x <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}

// ticks marks an axis every step, labelled without trailing zeros.
func ticks(step float64) plot.Ticker {
	return plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var out []plot.Tick
		for i := math.Ceil(lo / step); i*step <= hi+step/1e6; i++ {
			v := i * step
			out = append(out, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		return out
	})
}

// WriteFile renders the series (Render) into the file path, replacing
// it.
func (s Series) WriteFile(path string, width, height int) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	if err := s.Render(f, width, height); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("timeline: %w", err)
	}
	return nil
}
