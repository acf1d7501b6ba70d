// SendQueue: the bounded per-peer queue of outgoing frames, kept already framed in one contiguous buffer so the
// send loop can write everything queued with one socket write.
//
// Guarantees: TryEnqueue never blocks beyond a short lock (one copy of the payload) and never exceeds the frame or
// byte bound; frames come out in enqueue order; TryTake hands over all queued frames at once and the queue keeps
// accepting into a second buffer meanwhile. Failure case: a full queue rejects the frame (the caller counts a drop).
// Memory: two buffers per peer; a buffer that grew beyond RetainBytes is not kept after use.
using System.Buffers.Binary;

namespace Canopy.Transport;

internal sealed class SendQueue(int maxFrames, long maxBytes)
{
    public const int HeaderBytes = 5;
    private const int InitialBytes = 4096;
    private const int RetainBytes = 1 << 20;

    private readonly Lock _lock = new();
    private byte[] _buffer = [];
    private byte[]? _spare;
    private int _length;
    private int _frames;

    public bool IsEmpty
    {
        get
        {
            lock (_lock)
            {
                return _frames == 0;
            }
        }
    }

    /// <summary>Appends one frame; false if the queue is full. <paramref name="wasEmpty"/> tells the caller to wake the sender.</summary>
    public bool TryEnqueue(byte kind, ReadOnlySpan<byte> payload, out bool wasEmpty)
    {
        var need = HeaderBytes + payload.Length;
        lock (_lock)
        {
            wasEmpty = _frames == 0;
            if (_frames >= maxFrames || _length + (long)need > maxBytes)
            {
                return false;
            }

            if (_buffer.Length - _length < need)
            {
                Grow(_length + need);
            }

            var dst = _buffer.AsSpan(_length);
            BinaryPrimitives.WriteUInt32LittleEndian(dst, (uint)payload.Length);
            dst[4] = kind;
            payload.CopyTo(dst[HeaderBytes..]);
            _length += need;
            _frames++;
            return true;
        }
    }

    /// <summary>Takes every queued frame; return the buffer with <see cref="Recycle"/> once written.</summary>
    public bool TryTake(out byte[] buffer, out int length, out int frames)
    {
        lock (_lock)
        {
            buffer = _buffer;
            length = _length;
            frames = _frames;
            if (frames == 0)
            {
                return false;
            }

            _buffer = _spare ?? [];
            _spare = null;
            _length = 0;
            _frames = 0;
            return true;
        }
    }

    public void Recycle(byte[] buffer)
    {
        if (buffer.Length > RetainBytes)
        {
            return;
        }

        lock (_lock)
        {
            _spare ??= buffer;
        }
    }

    private void Grow(int needed)
    {
        var size = Math.Max(InitialBytes, (long)_buffer.Length * 2);
        size = Math.Min(Math.Max(size, needed), Math.Max(maxBytes, needed));
        var bigger = new byte[size];
        _buffer.AsSpan(0, _length).CopyTo(bigger);
        _buffer = bigger;
    }
}
