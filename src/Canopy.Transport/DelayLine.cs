// DelayLine: the injected one-way delay of a PeerTransport (PeerTransportOptions.InjectedDelay; benchmarks only: a
// WAN-like delay between servers). Frames accepted by TrySend wait here, then enter their peer's send queue.
//
// Guarantees: TryAdd never blocks beyond a short lock and one copy of the payload. One FIFO serves every peer: the
// delay is the same for all and the clock monotonic, so due times never decrease along the queue, and frames leave
// in TryAdd order (per peer, and overall). Bounded (frames and bytes): a full line rejects the frame (the caller
// counts a drop). The pump (one dedicated thread, see PeerTransport.RunDelayPump) sleeps on Wake while the line is
// empty, else until the head is due: the whole milliseconds with an interruptible wait, the rest with a precise
// sleep, so a frame leaves about 0.1 ms late at most on Linux, never early (Task.Delay, by contrast, is often 1-2 ms
// late on a busy machine, which would inflate the delay it is meant to inject).
using System.Runtime.InteropServices;

namespace Canopy.Transport;

internal sealed class DelayLine(int maxFrames, long maxBytes)
{
    private readonly Lock _lock = new();
    private readonly Queue<(long Due, Peer Peer, byte Kind, byte[] Payload)> _frames = new();
    private long _bytes;

    /// <summary>Set when a frame enters an empty line, and at dispose (wakes the pump).</summary>
    public ManualResetEventSlim Wake { get; } = new(false, spinCount: 0);

    /// <summary>Holds one frame for <paramref name="peer"/> until <paramref name="due"/> (a Stopwatch timestamp); false if the line is full.</summary>
    public bool TryAdd(long due, Peer peer, byte kind, ReadOnlySpan<byte> payload)
    {
        var need = SendQueue.HeaderBytes + (long)payload.Length;
        bool wasEmpty;
        lock (_lock)
        {
            if (_frames.Count >= maxFrames || _bytes + need > maxBytes)
            {
                return false;
            }

            wasEmpty = _frames.Count == 0;
            _frames.Enqueue((due, peer, kind, payload.ToArray()));
            _bytes += need;
        }

        if (wasEmpty)
        {
            Wake.Set();
        }

        return true;
    }

    /// <summary>
    /// Moves every frame due at or before <paramref name="now"/> into <paramref name="due"/>, in order. Returns the
    /// due time of the next frame held, or null when the line is empty.
    /// </summary>
    public long? TakeDue(long now, List<(Peer Peer, byte Kind, byte[] Payload)> due)
    {
        lock (_lock)
        {
            while (_frames.TryPeek(out var f) && f.Due <= now)
            {
                _frames.Dequeue();
                _bytes -= SendQueue.HeaderBytes + (long)f.Payload.Length;
                due.Add((f.Peer, f.Kind, f.Payload));
            }

            return _frames.TryPeek(out var next) ? next.Due : null;
        }
    }

    /// <summary>Sleeps <paramref name="time"/> (below a millisecond) precisely where the OS allows (nanosleep), else about a millisecond.</summary>
    public static void SleepBriefly(TimeSpan time)
    {
        if (time <= TimeSpan.Zero)
        {
            return;
        }

        if ((OperatingSystem.IsLinux() || OperatingSystem.IsMacOS()) && Environment.Is64BitProcess)
        {
            try
            {
                var request = new Timespec { Seconds = 0, Nanoseconds = (nint)Math.Min(999_999_999, time.Ticks * 100) };
                _ = NativeMethods.NanoSleep(ref request, IntPtr.Zero);
                return;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                // Fall through to the coarse sleep.
            }
        }

        Thread.Sleep(1);
    }

    /// <summary>struct timespec of 64-bit Linux and macOS (time_t and long are 64 bits).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public nint Seconds;
        public nint Nanoseconds;
    }

    private static class NativeMethods
    {
        [DllImport("libc", EntryPoint = "nanosleep")]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
        public static extern int NanoSleep(ref Timespec request, IntPtr remaining);
    }
}
