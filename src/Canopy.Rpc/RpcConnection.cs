// Client RPC connections (see Messages.cs for the wire format).
//
// Guarantees
// - RpcClient.CallAsync never blocks a thread: at most MaxInFlight requests per connection are outstanding (the
//   rest wait asynchronously for a slot: backpressure, not an unbounded queue); each call has its own deadline.
// - A connection failure fails every outstanding call with RpcConnectionException: the caller cannot know whether
//   a write that was in flight happened (ambiguous) — the client SDK maps that, reads are simply retried.
// - RpcServerConnection answers each request exactly once; requests run concurrently, at most MaxConcurrent per
//   connection (the reader stops reading until a slot frees: TCP pushes back on the client).
// - Untrusted input: a bad hello, an oversized frame or a frame that is not a request closes that connection; a
//   request whose JSON does not parse gets a BadRequest answer. Nothing escapes to the process.
namespace Canopy.Rpc;

using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;

/// <summary>The client hello and frame format.</summary>
public static class RpcWire
{
    public const ushort Version = 1;
    public const int MaxFrameBytes = 16 * 1024 * 1024;
    public const byte KindRequest = 1;
    public const byte KindResponse = 2;

    /// <summary>"CNPC" + u16 version + u16 reserved.</summary>
    public static byte[] Hello()
    {
        var b = new byte[8];
        "CNPC"u8.CopyTo(b);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(4), Version);
        return b;
    }

    public static byte[] EncodeFrame<T>(byte kind, ulong id, T body)
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(body, RpcJson.Options);
        if (json.Length + 9 > MaxFrameBytes)
        {
            throw new ArgumentException($"rpc frame of {json.Length} bytes is over the {MaxFrameBytes}-byte limit");
        }

        var frame = new byte[4 + 1 + 8 + json.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)(frame.Length - 4));
        frame[4] = kind;
        BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(5), id);
        json.CopyTo(frame.AsSpan(13));
        return frame;
    }

    /// <summary>Reads one frame: (kind, id, body). Throws IOException on EOF or a bad length.</summary>
    public static async Task<(byte Kind, ulong Id, byte[] Body)> ReadFrameAsync(Stream stream, byte[] header, CancellationToken ct)
    {
        await ReadExactlyAsync(stream, header.AsMemory(0, 4), ct).ConfigureAwait(false);
        var length = BinaryPrimitives.ReadUInt32LittleEndian(header);
        if (length < 9 || length > MaxFrameBytes)
        {
            throw new IOException($"rpc frame length {length} is outside [9, {MaxFrameBytes}]");
        }

        var rest = new byte[length];
        await ReadExactlyAsync(stream, rest, ct).ConfigureAwait(false);
        return (rest[0], BinaryPrimitives.ReadUInt64LittleEndian(rest.AsSpan(1)), rest[9..]);
    }

    public static async Task ReadExactlyAsync(Stream stream, Memory<byte> buffer, CancellationToken ct)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            var n = await stream.ReadAsync(buffer[read..], ct).ConfigureAwait(false);
            if (n == 0)
            {
                throw new IOException("connection closed by the other side");
            }

            read += n;
        }
    }
}

/// <summary>The connection to a server failed or could not be made. Outstanding calls fail with it.</summary>
public sealed class RpcConnectionException(string message, Exception? inner = null) : IOException(message, inner);

/// <summary>One client connection to one server, multiplexing concurrent calls.</summary>
public sealed class RpcClient : IAsyncDisposable
{
    /// <summary>Outstanding requests per connection: enough to keep a server busy, small enough to bound memory.</summary>
    public const int MaxInFlight = 1024;

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<RpcResponse>> _calls = new();
    private readonly SemaphoreSlim _slots = new(MaxInFlight, MaxInFlight);
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly CancellationTokenSource _closed = new();
    private readonly Task _reader;
    private long _nextId;
    private Exception? _failure;

    private RpcClient(string address, Socket socket)
    {
        Address = address;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = Task.Run(ReadLoopAsync);
    }

    /// <summary>The HOST:PORT this client talks to.</summary>
    public string Address { get; }

    public bool IsConnected => _failure is null && !_closed.IsCancellationRequested;

    /// <summary>Connects and exchanges hellos. Throws <see cref="RpcConnectionException"/> with a one-line reason.</summary>
    public static async Task<RpcClient> ConnectAsync(string address, TimeSpan timeout, CancellationToken ct = default)
    {
        var endpoint = ParseAddress(address);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        cts.CancelAfter(timeout);
        try
        {
            await socket.ConnectAsync(endpoint.Host, endpoint.Port, cts.Token).ConfigureAwait(false);
            var hello = RpcWire.Hello();
            await socket.SendAsync(hello, SocketFlags.None, cts.Token).ConfigureAwait(false);
            var answer = new byte[8];
            using (var probe = new NetworkStream(socket, ownsSocket: false))
            {
                await RpcWire.ReadExactlyAsync(probe, answer, cts.Token).ConfigureAwait(false);
            }

            if (!answer.AsSpan(0, 4).SequenceEqual("CNPC"u8) || BinaryPrimitives.ReadUInt16LittleEndian(answer.AsSpan(4)) != RpcWire.Version)
            {
                throw new RpcConnectionException($"{address} is not a Canopy server speaking client protocol {RpcWire.Version}");
            }

            return new RpcClient(address, socket);
        }
        catch (Exception ex) when (ex is SocketException or IOException or OperationCanceledException)
        {
            socket.Dispose();
            var why = ex switch
            {
                OperationCanceledException when !ct.IsCancellationRequested => $"no answer within {timeout.TotalSeconds:0.#} s",
                SocketException se => se.SocketErrorCode switch
                {
                    SocketError.ConnectionRefused => "connection refused",
                    SocketError.HostNotFound or SocketError.NoData => "unknown host",
                    SocketError.TimedOut => "timed out",
                    _ => se.Message,
                },
                _ => ex.Message,
            };
            throw new RpcConnectionException($"cannot reach {address}: {why}", ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Sends a request and waits for its answer (or the deadline, or a connection failure).</summary>
    public async Task<RpcResponse> CallAsync(RpcRequest request, TimeSpan timeout, CancellationToken ct = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct, _closed.Token);
        cts.CancelAfter(timeout);
        await _slots.WaitAsync(cts.Token).ConfigureAwait(false);
        var id = (ulong)Interlocked.Increment(ref _nextId);
        var tcs = new TaskCompletionSource<RpcResponse>(TaskCreationOptions.RunContinuationsAsynchronously);
        _calls[id] = tcs;
        try
        {
            if (_failure is { } f)
            {
                throw new RpcConnectionException($"connection to {Address} failed: {f.Message}", f);
            }

            var frame = RpcWire.EncodeFrame(RpcWire.KindRequest, id, request);
            await _writeLock.WaitAsync(cts.Token).ConfigureAwait(false);
            try
            {
                await _stream.WriteAsync(frame, cts.Token).ConfigureAwait(false);
            }
            finally
            {
                _writeLock.Release();
            }

            using (cts.Token.Register(() => tcs.TrySetCanceled()))
            {
                return await tcs.Task.ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            if (_failure is { } f)
            {
                throw new RpcConnectionException($"connection to {Address} failed: {f.Message}", f);
            }

            throw new TimeoutException($"no answer from {Address} within {timeout.TotalSeconds:0.#} s");
        }
        catch (IOException ex) when (ex is not RpcConnectionException)
        {
            Fail(ex);
            throw new RpcConnectionException($"connection to {Address} failed: {ex.Message}", ex);
        }
        finally
        {
            _calls.TryRemove(id, out _);
            _slots.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        Fail(new ObjectDisposedException(nameof(RpcClient)));
        try
        {
            await _reader.ConfigureAwait(false);
        }
        catch (Exception)
        {
            // the reader ends with the failure it reported
        }

        _closed.Dispose();
    }

    private async Task ReadLoopAsync()
    {
        var header = new byte[4];
        try
        {
            while (!_closed.IsCancellationRequested)
            {
                var (kind, id, body) = await RpcWire.ReadFrameAsync(_stream, header, _closed.Token).ConfigureAwait(false);
                if (kind != RpcWire.KindResponse)
                {
                    throw new IOException($"unexpected frame kind {kind} from the server");
                }

                var response = JsonSerializer.Deserialize<RpcResponse>(body, RpcJson.Options) ?? throw new IOException("empty response");
                if (_calls.TryRemove(id, out var tcs))
                {
                    tcs.TrySetResult(response);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or JsonException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            Fail(ex);
        }
    }

    private void Fail(Exception ex)
    {
        Interlocked.CompareExchange(ref _failure, ex, null);
        if (!_closed.IsCancellationRequested)
        {
            try
            {
                _closed.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        _stream.Dispose();
        foreach (var (_, tcs) in _calls)
        {
            tcs.TrySetException(new RpcConnectionException($"connection to {Address} lost: {ex.Message}", ex));
        }
    }

    private static (string Host, int Port) ParseAddress(string address)
    {
        var colon = address.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(address[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is <= 0 or > 65535)
        {
            throw new RpcConnectionException($"invalid address '{address}': expected HOST:PORT");
        }

        return (address[..colon].Trim('[', ']'), port);
    }
}

/// <summary>Serves the client protocol on one accepted socket (after the transport consumed the 4 magic bytes).</summary>
public static class RpcServerConnection
{
    /// <summary>Requests served at once per connection (the reader waits for a slot: TCP backpressure).</summary>
    public const int MaxConcurrent = 256;

    public static async Task ServeAsync(Socket socket, Func<RpcRequest, CancellationToken, Task<RpcResponse>> handler, Action<string> log, CancellationToken stopping)
    {
        var remote = socket.RemoteEndPoint?.ToString() ?? "?";
        using var stream = new NetworkStream(socket, ownsSocket: true);
        using var writeLock = new SemaphoreSlim(1, 1);
        using var slots = new SemaphoreSlim(MaxConcurrent, MaxConcurrent);
        var running = new ConcurrentDictionary<Task, byte>();
        try
        {
            socket.NoDelay = true;
            using (var helloTimeout = CancellationTokenSource.CreateLinkedTokenSource(stopping))
            {
                helloTimeout.CancelAfter(TimeSpan.FromSeconds(5));
                var rest = new byte[4];
                await RpcWire.ReadExactlyAsync(stream, rest, helloTimeout.Token).ConfigureAwait(false);
                var version = BinaryPrimitives.ReadUInt16LittleEndian(rest);
                if (version != RpcWire.Version)
                {
                    log($"client {remote}: unsupported client protocol version {version}; closing");
                    return;
                }

                await stream.WriteAsync(RpcWire.Hello(), helloTimeout.Token).ConfigureAwait(false);
            }

            var header = new byte[4];
            while (!stopping.IsCancellationRequested)
            {
                var (kind, id, body) = await RpcWire.ReadFrameAsync(stream, header, stopping).ConfigureAwait(false);
                if (kind != RpcWire.KindRequest)
                {
                    log($"client {remote}: frame kind {kind} is not a request; closing");
                    return;
                }

                await slots.WaitAsync(stopping).ConfigureAwait(false);
                var task = Task.Run(
                    async () =>
                    {
                        try
                        {
                            RpcResponse response;
                            try
                            {
                                var request = JsonSerializer.Deserialize<RpcRequest>(body, RpcJson.Options)
                                    ?? throw new JsonException("empty request");
                                response = await handler(request, stopping).ConfigureAwait(false);
                            }
                            catch (JsonException ex)
                            {
                                response = RpcResponse.Fail(RpcErrorCode.BadRequest, $"malformed request: {ex.Message}");
                            }
                            catch (Exception ex) when (ex is not OperationCanceledException)
                            {
                                log($"client {remote}: request failed: {ex}");
                                response = RpcResponse.Fail(RpcErrorCode.Internal, $"internal error: {ex.Message}");
                            }

                            var frame = RpcWire.EncodeFrame(RpcWire.KindResponse, id, response);
                            await writeLock.WaitAsync(stopping).ConfigureAwait(false);
                            try
                            {
                                await stream.WriteAsync(frame, stopping).ConfigureAwait(false);
                            }
                            finally
                            {
                                writeLock.Release();
                            }
                        }
                        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
                        {
                            // the connection is going away
                        }
                        finally
                        {
                            slots.Release();
                        }
                    },
                    CancellationToken.None);
                running[task] = 0;
                _ = task.ContinueWith(t => running.TryRemove(t, out _), TaskScheduler.Default);
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // closed by the client, a bad frame, or shutting down
            if (ex is IOException io && !io.Message.Contains("closed", StringComparison.Ordinal))
            {
                log($"client {remote}: {io.Message}; closing");
            }
        }
        finally
        {
            try
            {
                await Task.WhenAll(running.Keys).ConfigureAwait(false);
            }
            catch (Exception)
            {
                // each request task handles its own failures
            }
        }
    }
}
