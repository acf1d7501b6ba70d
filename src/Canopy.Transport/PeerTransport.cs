// PeerTransport: server-to-server frames over TCP, one connection per pair of servers carrying both directions.
//
// Wire format (all integers little-endian)
//   handshake : see Handshake.cs (dialer sends a hello; the acceptor answers a status byte, then its own hello)
//   frame     : u32 payload length · u8 kind · payload      (payload length <= MaxFrameBytes)
//
// Guarantees
// - TrySend never blocks (beyond a short lock and one copy of the payload) and never throws for runtime conditions:
//   an unknown peer, a full per-peer queue or a disposed transport return false and count a drop. The caller may
//   reuse its buffer as soon as TrySend returns.
// - Frames to one peer leave in TrySend order; everything queued is written with one socket write. Frames accepted
//   by TrySend while the peer is unreachable wait in the bounded queue and go out once a connection exists.
// - At most one connection per pair of servers carries frames. Whoever has frames to send dials when there is no
//   connection; the acceptor decides (see AcceptorDecision): an existing connection wins, except one to an older
//   incarnation of a restarted peer; when both servers dial at once the dial of the lower server id wins. The
//   loser is refused during its handshake, before any frame is sent on it, so the tie-break loses no frame.
// - OnFrame runs on the thread-pool thread of the receiving connection's read loop: calls for one connection are
//   sequential and in wire order, calls for different peers may run concurrently. The payload array is owned by the
//   handler. It must be fast (post to a queue). An exception from it is logged and the connection goes on.
// - Peer state changes are delivered in order, one at a time, from a single dispatcher task.
// - Untrusted input never escapes as an exception: bad magic/version/secret/server id, handshake timeouts and
//   oversized frames close that connection with a log line; the transport keeps serving everyone else.
// - Injected delay (PeerTransportOptions.InjectedDelay, benchmarks only): every frame accepted by TrySend waits in the
//   transport's delay line (one FIFO, bounded) and enters its peer's send queue that long later (about 0.1 ms more
//   at most), moved there by one dedicated pump thread; order per peer is kept and TrySend still never blocks.
//   Handshakes are not delayed. Frames still held at dispose are lost, like queued ones.
// - DisposeAsync closes every socket and waits for every loop: no callback runs after it returns. Do not call it
//   from inside a callback (it would wait for itself).
//
// Failure cases: frames being written when a connection fails are lost (counted in FramesLost); so are frames
// still queued at dispose. Raft tolerates both. Frames may be reordered only across a connection replacement (a
// restarted peer, or a lost handshake answer), never within one connection. A half-open connection (peer vanished
// without a FIN) is detected by TCP keep-alive (about 16 s) or a failing write; until then the acceptor refuses the
// peer's new dials as duplicates, unless the peer restarted (new incarnation). A write to a vanished peer fails
// after about 20 s (TCP_USER_TIMEOUT on Linux).
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Threading.Channels;

namespace Canopy.Transport;

/// <summary>Receives one frame. <paramref name="payload"/> is a fresh array owned by the handler.</summary>
public delegate void FrameHandler(ulong fromPeer, byte kind, byte[] payload);

/// <summary>
/// A client (not a server) connected to the listening port: it sent the client magic "CNPC". The handler owns
/// the socket from here on (the 4 magic bytes were consumed; the rest of the client hello follows).
/// </summary>
public delegate void ClientConnectionHandler(Socket socket);

/// <summary>A peer's connection came up (<paramref name="connected"/> true) or went down.</summary>
public delegate void PeerStateHandler(ulong peerId, bool connected);

/// <summary>The connection currently carrying traffic to a peer.</summary>
public sealed record PeerConnectionInfo(ulong PeerId, EndPoint? LocalEndPoint, EndPoint? RemoteEndPoint, bool DialedByLocal);

/// <summary>
/// Cumulative counters of a transport (a snapshot). Bytes include the 5-byte frame headers. FramesDropped: refused by
/// TrySend (unknown peer, full queue, disposed). FramesLost: accepted but lost with a failed connection.
/// ConnectionsDialed/Accepted: handshakes completed as dialer/acceptor; DuplicateConnectionsRefused: dials refused by
/// the one-connection-per-pair rule; HandshakesRejected: bad magic/version/secret/id, timeouts, failed handshakes;
/// ProtocolErrors: oversized frames received.
/// </summary>
public readonly record struct TransportCounters(
    long FramesSent,
    long BytesSent,
    long FramesReceived,
    long BytesReceived,
    long FramesDropped,
    long FramesLost,
    long ConnectionsDialed,
    long ConnectionsAccepted,
    long DuplicateConnectionsRefused,
    long HandshakesRejected,
    long ProtocolErrors,
    int ConnectedPeers);

/// <summary>Frames to and from the other servers of the cluster over TCP. See the file header for the contract.</summary>
public sealed class PeerTransport : IAsyncDisposable
{
    private const int ReceiveBufferBytes = 64 * 1024;

    private readonly PeerTransportOptions _options;
    private readonly FrameHandler _onFrame;
    private readonly PeerStateHandler? _onPeerState;
    private readonly ClientConnectionHandler? _onClientConnection;
    private readonly Action<string>? _log;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _cts = new();
    private readonly ConcurrentDictionary<ulong, Peer> _peers = new();
    private readonly ConcurrentDictionary<Connection, byte> _connections = new();
    private readonly ConcurrentDictionary<Task, byte> _tasks = new();
    private readonly Channel<(ulong Peer, bool Connected)> _events =
        Channel.CreateUnbounded<(ulong, bool)>(new UnboundedChannelOptions { SingleReader = true });

    private readonly Task _eventLoop;
    private readonly byte[] _mac;
    private readonly ulong _incarnation;
    private readonly long _queueBytes;
    private readonly long _delayTicks;
    private readonly DelayLine? _delayLine;
    private long _connectionSeq;
    private int _pendingHandshakes;
    private int _disposed;

    private long _framesSent;
    private long _bytesSent;
    private long _framesReceived;
    private long _bytesReceived;
    private long _framesDropped;
    private long _framesLost;
    private long _connectionsDialed;
    private long _connectionsAccepted;
    private long _duplicatesRefused;
    private long _handshakesRejected;
    private long _protocolErrors;
    private int _connectedPeers;

    /// <summary>Binds and starts listening at once; <see cref="LocalEndPoint"/> is the bound address (port 0 resolved).</summary>
    /// <param name="localId">This server's id (non-zero).</param>
    /// <param name="listenEndPoint">Where to accept connections from the other servers.</param>
    /// <param name="options">Configuration; validated here.</param>
    /// <param name="onFrame">Called for every received frame (see the file header for threading).</param>
    /// <param name="onPeerState">Optional: called when a peer connects or disconnects.</param>
    /// <param name="log">Optional log sink; must be thread-safe.</param>
    public PeerTransport(
        ulong localId,
        IPEndPoint listenEndPoint,
        PeerTransportOptions options,
        FrameHandler onFrame,
        PeerStateHandler? onPeerState = null,
        Action<string>? log = null,
        ClientConnectionHandler? onClientConnection = null)
    {
        ArgumentOutOfRangeException.ThrowIfZero(localId);
        ArgumentNullException.ThrowIfNull(listenEndPoint);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(onFrame);
        options.Validate();

        LocalId = localId;
        _options = options;
        _onFrame = onFrame;
        _onPeerState = onPeerState;
        _onClientConnection = onClientConnection;
        _log = log;
        _mac = Handshake.ComputeMac(options.ClusterSecret);
        _incarnation = BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)) | 1;
        _queueBytes = Math.Max(options.SendQueueBytes, (long)options.MaxFrameBytes + SendQueue.HeaderBytes);
        _delayTicks = (long)(options.InjectedDelay.TotalSeconds * Stopwatch.Frequency);
        if (_delayTicks > 0)
        {
            // Holds at most a few times what the send queues do; frames leave after InjectedDelay whatever the peer's state.
            _delayLine = new DelayLine(4 * options.SendQueueFrames, 2 * _queueBytes);
        }

        _listener = new Socket(listenEndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // Lets a restarted server bind its port while old connections linger in TIME_WAIT. Only SO_REUSEADDR:
            // .NET's SocketOptionName.ReuseAddress also sets SO_REUSEPORT on Unix, which would let a second server
            // bind the same port and silently share its connections.
            if (OperatingSystem.IsLinux())
            {
                _listener.SetRawSocketOption(1 /* SOL_SOCKET */, 2 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
            }
            else if (OperatingSystem.IsMacOS() || OperatingSystem.IsFreeBSD())
            {
                _listener.SetRawSocketOption(0xffff /* SOL_SOCKET */, 4 /* SO_REUSEADDR */, BitConverter.GetBytes(1));
            }

            _listener.Bind(listenEndPoint);
            _listener.Listen(512);
            LocalEndPoint = (IPEndPoint)_listener.LocalEndPoint!;
        }
        catch
        {
            _listener.Dispose();
            throw;
        }

        _eventLoop = Task.Run(DispatchEventsAsync);
        if (_delayLine is { } line)
        {
            StartDelayPump(line);
        }

        Track(AcceptLoopAsync);
        Log($"listening on {LocalEndPoint}");
    }

    public ulong LocalId { get; }

    /// <summary>The first 4 bytes a client (rather than a server) sends on the listening port.</summary>
    public static ReadOnlySpan<byte> ClientMagic => "CNPC"u8;

    /// <summary>The bound listening endpoint.</summary>
    public IPEndPoint LocalEndPoint { get; }

    public TransportCounters Counters => new(
        Interlocked.Read(ref _framesSent),
        Interlocked.Read(ref _bytesSent),
        Interlocked.Read(ref _framesReceived),
        Interlocked.Read(ref _bytesReceived),
        Interlocked.Read(ref _framesDropped),
        Interlocked.Read(ref _framesLost),
        Interlocked.Read(ref _connectionsDialed),
        Interlocked.Read(ref _connectionsAccepted),
        Interlocked.Read(ref _duplicatesRefused),
        Interlocked.Read(ref _handshakesRejected),
        Interlocked.Read(ref _protocolErrors),
        Volatile.Read(ref _connectedPeers));

    private CancellationToken Stopping => _cts.Token;

    /// <summary>Where to dial <paramref name="peerId"/> (IPEndPoint or DnsEndPoint). Makes the peer known to <see cref="TrySend"/>.</summary>
    public void SetPeerAddress(ulong peerId, EndPoint address)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (peerId == 0 || peerId == LocalId)
        {
            throw new ArgumentOutOfRangeException(nameof(peerId), peerId, "a peer id must be non-zero and not the local id");
        }

        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var peer = GetOrAddPeer(peerId);
        lock (peer.Lock)
        {
            peer.Address = address;
        }

        peer.Signal.Set();
    }

    /// <summary>
    /// Queues one frame for <paramref name="peerId"/> without blocking; the payload is copied. False (and a drop is
    /// counted) if the peer is unknown (no address set and never connected), its queue is full, or the transport is disposed.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The payload exceeds <see cref="PeerTransportOptions.MaxFrameBytes"/>.</exception>
    public bool TrySend(ulong peerId, byte kind, ReadOnlyMemory<byte> payload)
    {
        if (payload.Length > _options.MaxFrameBytes)
        {
            throw new ArgumentOutOfRangeException(nameof(payload), payload.Length, $"frame payload exceeds {_options.MaxFrameBytes} bytes");
        }

        if (Volatile.Read(ref _disposed) != 0 || !_peers.TryGetValue(peerId, out var peer))
        {
            Interlocked.Increment(ref _framesDropped);
            return false;
        }

        if (_delayLine is { } line)
        {
            // Benchmarks only: held for the injected delay, then moved into the send queue by the delay pump.
            if (!line.TryAdd(Stopwatch.GetTimestamp() + _delayTicks, peer, kind, payload.Span))
            {
                Interlocked.Increment(ref _framesDropped);
                return false;
            }

            return true;
        }

        if (!peer.Queue.TryEnqueue(kind, payload.Span, out var wasEmpty))
        {
            Interlocked.Increment(ref _framesDropped);
            return false;
        }

        if (wasEmpty)
        {
            peer.Signal.Set();
        }

        return true;
    }

    /// <summary>True if a connection to <paramref name="peerId"/> is carrying traffic.</summary>
    public bool IsConnected(ulong peerId) => _peers.TryGetValue(peerId, out var peer) && peer.Active is not null;

    /// <summary>The connection carrying traffic to <paramref name="peerId"/>, or null.</summary>
    public PeerConnectionInfo? GetConnectionInfo(ulong peerId) =>
        _peers.TryGetValue(peerId, out var peer) && peer.Active is { } c
            ? new PeerConnectionInfo(peerId, c.LocalEndPoint, c.RemoteEndPoint, c.DialedByLocal)
            : null;

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        Log("shutting down");
        await _cts.CancelAsync();
        _listener.Dispose();
        foreach (var c in _connections.Keys)
        {
            c.Close();
        }

        foreach (var p in _peers.Values)
        {
            p.Signal.Set();
        }

        _delayLine?.Wake.Set();

        while (!_tasks.IsEmpty)
        {
            try
            {
                await Task.WhenAll(_tasks.Keys);
            }
            catch (Exception e)
            {
                Log($"a loop failed during shutdown: {e.Message}");
            }
        }

        _events.Writer.TryComplete();
        await _eventLoop;

        // _cts is deliberately not disposed: a late caller (e.g. SetPeerAddress racing with dispose) may still read
        // its token, and a cancelled source without timers holds nothing that needs releasing.
    }

    // ---- accepting ----

    private async Task AcceptLoopAsync()
    {
        while (!Stopping.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(Stopping);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e)
            {
                if (Stopping.IsCancellationRequested)
                {
                    return;
                }

                Log($"accept failed: {e.Message}");
                await Task.Delay(50, CancellationToken.None);
                continue;
            }

            if (Interlocked.Increment(ref _pendingHandshakes) > _options.MaxPendingHandshakes)
            {
                Interlocked.Decrement(ref _pendingHandshakes);
                Interlocked.Increment(ref _handshakesRejected);
                Log($"refusing a connection from {SafeRemote(socket)}: more than {_options.MaxPendingHandshakes} handshakes pending");
                socket.Dispose();
                continue;
            }

            var conn = new Connection(socket, dialedByLocal: false, Interlocked.Increment(ref _connectionSeq));
            Track(() => AcceptHandshakeAsync(conn));
        }
    }

    private async Task AcceptHandshakeAsync(Connection conn)
    {
        var activated = false;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Stopping);
        try
        {
            if (!Register(conn))
            {
                return;
            }

            conn.CaptureEndPoints();
            Configure(conn.Socket);
            timeout.CancelAfter(_options.HandshakeTimeout);
            var hello = new byte[Handshake.HelloBytes];
            await ReadExactlyAsync(conn.Socket, hello.AsMemory(0, 4), timeout.Token);
            if (_onClientConnection is { } onClient && hello.AsSpan(0, 4).SequenceEqual(ClientMagic))
            {
                // A client, not a server: hand the socket over (the client protocol is not ours to speak here).
                _connections.TryRemove(conn, out _);
                activated = true;
                onClient(conn.Socket);
                return;
            }

            await ReadExactlyAsync(conn.Socket, hello.AsMemory(4), timeout.Token);

            var check = Handshake.Check(hello, _mac, out var peerId, out var incarnation, out var version);
            var refusal = check switch
            {
                HelloCheck.BadMagic => (HandshakeStatus?)null,
                HelloCheck.UnsupportedVersion => HandshakeStatus.UnsupportedVersion,
                HelloCheck.WrongSecret => HandshakeStatus.WrongSecret,
                _ when peerId == 0 || peerId == LocalId => HandshakeStatus.BadServerId,
                _ => HandshakeStatus.Accepted,
            };
            if (refusal != HandshakeStatus.Accepted)
            {
                Interlocked.Increment(ref _handshakesRejected);
                var why = check switch
                {
                    HelloCheck.BadMagic => "bad magic (not a Canopy transport client)",
                    HelloCheck.UnsupportedVersion => $"unsupported protocol version {version} (we speak {Handshake.ProtocolVersion})",
                    HelloCheck.WrongSecret => "wrong cluster secret",
                    _ => $"invalid server id {peerId}",
                };
                Log($"rejected connection {conn.Describe}: {why}");
                if (refusal is { } status)
                {
                    await SendStatusAsync(conn, status, timeout.Token);
                }

                return;
            }

            var peer = GetOrAddPeer(peerId);
            var (decision, replaced, reason) = AcceptorDecision(peer, conn, incarnation);
            if (replaced is not null)
            {
                Log($"peer {peerId} restarted: closing its old connection {replaced.Describe}");
                CloseConnection(replaced);
            }

            if (decision != HandshakeStatus.Accepted)
            {
                if (decision == HandshakeStatus.Duplicate)
                {
                    Interlocked.Increment(ref _duplicatesRefused);
                }

                Log($"refused connection {conn.Describe} from peer {peerId}: {reason}");
                await SendStatusAsync(conn, decision, timeout.Token);
                return;
            }

            activated = true;
            Interlocked.Increment(ref _connectionsAccepted);
            Log($"accepted connection {conn.Describe} from peer {peerId}");
            Track(() => ReceiveLoopAsync(peer, conn));
            peer.Signal.Set();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Interlocked.Increment(ref _handshakesRejected);
            var why = e is OperationCanceledException && !Stopping.IsCancellationRequested ? "handshake timed out" : e.Message;
            Log($"handshake of incoming connection {conn.Describe} failed: {why}");
        }
        finally
        {
            Interlocked.Decrement(ref _pendingHandshakes);
            if (!activated)
            {
                CloseConnection(conn);
            }
        }
    }

    /// <summary>
    /// The acceptor's tie-break, atomic with publishing the connection. An existing connection wins (a redial from
    /// a live peer means that connection is about to be seen closed), except one to an older incarnation (the peer
    /// restarted: it is replaced). With no connection, if our own dial has already sent its hello, the dial of the
    /// lower id wins. On acceptance the answer is written before the connection is published, so no frame can
    /// precede it.
    /// </summary>
    private (HandshakeStatus Decision, Connection? Replaced, string Reason) AcceptorDecision(Peer peer, Connection conn, ulong incarnation)
    {
        lock (peer.Lock)
        {
            if (Stopping.IsCancellationRequested)
            {
                return (HandshakeStatus.ShuttingDown, null, "shutting down");
            }

            Connection? replaced = null;
            if (peer.Active is { } active && active.PeerIncarnation != incarnation)
            {
                replaced = active;
                SetActive(peer, null);
            }

            if (peer.Active is { } existing)
            {
                return (HandshakeStatus.Duplicate, replaced, $"already connected via {existing.Describe}");
            }

            if (peer.DialHelloSent && LocalId < peer.Id)
            {
                return (HandshakeStatus.Duplicate, replaced, "simultaneous dial: our dial wins (lower server id)");
            }

            var answer = new byte[1 + Handshake.HelloBytes];
            answer[0] = (byte)HandshakeStatus.Accepted;
            Handshake.WriteHello(answer.AsSpan(1), LocalId, _incarnation, _mac);
            try
            {
                // A fresh socket's send buffer is empty: this small write completes at once.
                conn.Socket.SendTimeout = 2000;
                conn.Socket.Send(answer);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return (HandshakeStatus.ShuttingDown, replaced, $"answer failed: {e.Message}");
            }

            conn.PeerId = peer.Id;
            conn.PeerIncarnation = incarnation;
            SetActive(peer, conn);
            return (HandshakeStatus.Accepted, replaced, "accepted");
        }
    }

    // ---- dialing and sending ----

    private enum DialResult
    {
        Connected,
        Skipped,
        Failed,
    }

    private async Task SendLoopAsync(Peer peer)
    {
        var backoff = _options.ReconnectInitialBackoff;
        var nextDial = 0L;
        while (!Stopping.IsCancellationRequested)
        {
            var seen = peer.Signal.Version;
            if (peer.Active is { } conn)
            {
                backoff = _options.ReconnectInitialBackoff;
                if (!peer.Queue.TryTake(out var buffer, out var length, out var frames))
                {
                    await peer.Signal.WaitAsync(seen);
                    continue;
                }

                try
                {
                    var pending = buffer.AsMemory(0, length);
                    while (!pending.IsEmpty)
                    {
                        var n = await conn.Socket.SendAsync(pending, SocketFlags.None, Stopping);
                        pending = pending[n..];
                    }

                    Interlocked.Add(ref _framesSent, frames);
                    Interlocked.Add(ref _bytesSent, length);
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    Interlocked.Add(ref _framesLost, frames);
                    ConnectionLost(peer, conn, $"send failed: {e.Message}");
                }
                finally
                {
                    peer.Queue.Recycle(buffer);
                }

                continue;
            }

            EndPoint? address;
            lock (peer.Lock)
            {
                address = peer.Address;
            }

            if (address is null || peer.Queue.IsEmpty)
            {
                await peer.Signal.WaitAsync(seen);
                continue;
            }

            var wait = nextDial - Environment.TickCount64;
            if (wait > 0)
            {
                // Woken early only to re-check (e.g. the peer dialed us); the backoff still holds otherwise.
                await Task.WhenAny(peer.Signal.WaitAsync(seen), Task.Delay(TimeSpan.FromMilliseconds(wait), Stopping));
                continue;
            }

            var result = await DialAsync(peer, address);
            if (result == DialResult.Failed)
            {
                nextDial = Environment.TickCount64 + (long)backoff.TotalMilliseconds;
                backoff = TimeSpan.FromTicks(Math.Min(backoff.Ticks * 2, _options.ReconnectMaxBackoff.Ticks));
            }
            else if (result == DialResult.Connected)
            {
                // Even a connection that drops at once is not redialed before this.
                nextDial = Environment.TickCount64 + (long)_options.ReconnectInitialBackoff.TotalMilliseconds;
            }
        }
    }

    /// <summary>Starts the delay pump thread; dispose waits for it like for the loops.</summary>
    private void StartDelayPump(DelayLine line)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _tasks.TryAdd(done.Task, 0);
        _ = done.Task.ContinueWith(t => _tasks.TryRemove(t, out _), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        var thread = new Thread(() =>
        {
            try
            {
                RunDelayPump(line);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                Log($"delay pump failed: {e}");
            }
            finally
            {
                done.TrySetResult();
            }
        })
        {
            IsBackground = true,
            Name = $"transport-delay-{LocalId}",
        };
        thread.Start();
    }

    /// <summary>
    /// Benchmarks only: moves the frames of the delay line into their peers' send queues once due, in order. Sleeps
    /// while the line is empty; else until the head is due: whole milliseconds in an interruptible wait (dispose wakes
    /// it), the sub-millisecond rest with a precise sleep (see DelayLine). Never runs a callback.
    /// </summary>
    private void RunDelayPump(DelayLine line)
    {
        var due = new List<(Peer Peer, byte Kind, byte[] Payload)>();
        var woken = new HashSet<Peer>();
        while (!Stopping.IsCancellationRequested)
        {
            // Reset before looking: a frame added after the look sets Wake again, so no wake-up is lost.
            line.Wake.Reset();
            var now = Stopwatch.GetTimestamp();
            var next = line.TakeDue(now, due);
            if (due.Count > 0)
            {
                foreach (var (peer, kind, payload) in due)
                {
                    if (peer.Queue.TryEnqueue(kind, payload, out var wasEmpty))
                    {
                        if (wasEmpty)
                        {
                            woken.Add(peer);
                        }
                    }
                    else
                    {
                        Interlocked.Increment(ref _framesDropped);
                    }
                }

                foreach (var peer in woken)
                {
                    peer.Signal.Set();
                }

                due.Clear();
                woken.Clear();
            }

            if (next is not { } at)
            {
                line.Wake.Wait();
                continue;
            }

            var left = TimeSpan.FromSeconds((at - now) / (double)Stopwatch.Frequency);
            if (left >= TimeSpan.FromMilliseconds(1))
            {
                // New frames are due later than the head: only dispose sets Wake while the line is not empty.
                line.Wake.Wait((int)left.TotalMilliseconds);
            }
            else
            {
                DelayLine.SleepBriefly(left);
            }
        }
    }

    private async Task<DialResult> DialAsync(Peer peer, EndPoint address)
    {
        var socket = address is IPEndPoint ip
            ? new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        var conn = new Connection(socket, dialedByLocal: true, Interlocked.Increment(ref _connectionSeq));
        var activated = false;
        var helloSent = false;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(Stopping);
        try
        {
            if (!Register(conn))
            {
                return DialResult.Skipped;
            }

            timeout.CancelAfter(_options.ConnectTimeout);
            await socket.ConnectAsync(address, timeout.Token);
            conn.CaptureEndPoints();
            Configure(socket);
            timeout.CancelAfter(_options.HandshakeTimeout);

            var hello = new byte[Handshake.HelloBytes];
            Handshake.WriteHello(hello, LocalId, _incarnation, _mac);
            lock (peer.Lock)
            {
                if (peer.Active is not null || Stopping.IsCancellationRequested)
                {
                    return DialResult.Skipped; // the peer dialed us meanwhile
                }

                peer.DialHelloSent = helloSent = true;
            }

            await SendAllAsync(socket, hello, timeout.Token);
            var status = new byte[1];
            await ReadExactlyAsync(socket, status, timeout.Token);
            if ((HandshakeStatus)status[0] != HandshakeStatus.Accepted)
            {
                var why = Enum.IsDefined((HandshakeStatus)status[0]) ? ((HandshakeStatus)status[0]).ToString() : $"unknown status {status[0]}";
                Log($"peer {peer.Id} at {address} refused connection {conn.Describe}: {why}");
                return DialResult.Failed;
            }

            await ReadExactlyAsync(socket, hello, timeout.Token);
            var check = Handshake.Check(hello, _mac, out var peerId, out var incarnation, out var version);
            if (check != HelloCheck.Ok || peerId != peer.Id)
            {
                Interlocked.Increment(ref _handshakesRejected);
                var why = check switch
                {
                    HelloCheck.BadMagic => "bad magic",
                    HelloCheck.UnsupportedVersion => $"unsupported protocol version {version}",
                    HelloCheck.WrongSecret => "wrong cluster secret",
                    _ => $"it is server {peerId}",
                };
                Log($"dial {conn.Describe} for peer {peer.Id}: bad answer ({why})");
                return DialResult.Failed;
            }

            Connection? replaced;
            lock (peer.Lock)
            {
                peer.DialHelloSent = helloSent = false;
                if (Stopping.IsCancellationRequested)
                {
                    return DialResult.Skipped;
                }

                // The acceptor decided: it had no connection to us, so any other connection we hold is dying.
                replaced = peer.Active;
                conn.PeerId = peer.Id;
                conn.PeerIncarnation = incarnation;
                SetActive(peer, conn);
                activated = true;
            }

            if (replaced is not null)
            {
                Log($"connection {conn.Describe} to peer {peer.Id} replaces {replaced.Describe}");
                CloseConnection(replaced);
            }

            Interlocked.Increment(ref _connectionsDialed);
            Log($"connected to peer {peer.Id} via {conn.Describe}");
            Track(() => ReceiveLoopAsync(peer, conn));
            return DialResult.Connected;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            if (!Stopping.IsCancellationRequested)
            {
                var why = e is OperationCanceledException ? "timed out" : e.Message;
                Log($"dial {conn.Describe} for peer {peer.Id} at {address} failed: {why}");
            }

            return DialResult.Failed;
        }
        finally
        {
            if (helloSent)
            {
                lock (peer.Lock)
                {
                    peer.DialHelloSent = false;
                }
            }

            if (!activated)
            {
                CloseConnection(conn);
            }
        }
    }

    // ---- receiving ----

    private async Task ReceiveLoopAsync(Peer peer, Connection conn)
    {
        var buf = new byte[ReceiveBufferBytes];
        int start = 0, end = 0;
        var reason = "closed";
        try
        {
            while (true)
            {
                while (end - start < SendQueue.HeaderBytes)
                {
                    if (buf.Length - start < SendQueue.HeaderBytes)
                    {
                        buf.AsSpan(start, end - start).CopyTo(buf);
                        end -= start;
                        start = 0;
                    }

                    var n = await conn.Socket.ReceiveAsync(buf.AsMemory(end), SocketFlags.None, Stopping);
                    if (n == 0)
                    {
                        reason = end == start ? "closed by the peer" : "closed by the peer inside a frame header";
                        return;
                    }

                    end += n;
                }

                var length = BinaryPrimitives.ReadUInt32LittleEndian(buf.AsSpan(start));
                var kind = buf[start + 4];
                if (length > (uint)_options.MaxFrameBytes)
                {
                    Interlocked.Increment(ref _protocolErrors);
                    reason = $"protocol error: frame of {length} bytes exceeds the {_options.MaxFrameBytes}-byte limit (buggy or hostile peer)";
                    return;
                }

                start += SendQueue.HeaderBytes;
                var payload = length == 0 ? [] : new byte[length];
                var have = Math.Min(end - start, (int)length);
                buf.AsSpan(start, have).CopyTo(payload);
                start += have;
                if (start == end)
                {
                    start = end = 0;
                }

                while (have < payload.Length)
                {
                    // Rest of a large frame: straight into the payload, no staging copy.
                    var n = await conn.Socket.ReceiveAsync(payload.AsMemory(have), SocketFlags.None, Stopping);
                    if (n == 0)
                    {
                        reason = "closed by the peer inside a frame";
                        return;
                    }

                    have += n;
                }

                Interlocked.Increment(ref _framesReceived);
                Interlocked.Add(ref _bytesReceived, SendQueue.HeaderBytes + payload.Length);
                try
                {
                    _onFrame(peer.Id, kind, payload);
                }
                catch (Exception e)
                {
                    Log($"frame handler threw for a frame from peer {peer.Id}: {e}");
                }
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            reason = Stopping.IsCancellationRequested ? "shutting down" : e.Message;
        }
        finally
        {
            ConnectionLost(peer, conn, reason);
        }
    }

    // ---- state ----

    private Peer GetOrAddPeer(ulong peerId)
    {
        if (_peers.TryGetValue(peerId, out var peer))
        {
            return peer;
        }

        var created = new Peer(peerId, _options.SendQueueFrames, _queueBytes);
        if (_peers.TryAdd(peerId, created))
        {
            Track(() => SendLoopAsync(created));
            return created;
        }

        return _peers[peerId];
    }

    /// <summary>Under peer.Lock: switches the active connection and reports the change, in order.</summary>
    private void SetActive(Peer peer, Connection? conn)
    {
        var old = peer.Active;
        if (old == conn)
        {
            return;
        }

        peer.Active = conn;
        if (old is not null)
        {
            Interlocked.Decrement(ref _connectedPeers);
            _events.Writer.TryWrite((peer.Id, false));
        }

        if (conn is not null)
        {
            Interlocked.Increment(ref _connectedPeers);
            _events.Writer.TryWrite((peer.Id, true));
        }
    }

    private void ConnectionLost(Peer peer, Connection conn, string reason)
    {
        var wasActive = false;
        lock (peer.Lock)
        {
            if (peer.Active == conn)
            {
                SetActive(peer, null);
                wasActive = true;
            }
        }

        if (CloseConnection(conn) && wasActive && !Stopping.IsCancellationRequested)
        {
            Log($"lost connection {conn.Describe} to peer {peer.Id}: {reason}");
        }

        peer.Signal.Set();
    }

    /// <summary>Tracks an open socket so dispose can close it; false (and closed) if the transport is stopping.</summary>
    private bool Register(Connection conn)
    {
        _connections.TryAdd(conn, 0);
        if (Stopping.IsCancellationRequested)
        {
            CloseConnection(conn);
            return false;
        }

        return true;
    }

    private bool CloseConnection(Connection conn)
    {
        _connections.TryRemove(conn, out _);
        return conn.Close();
    }

    private void Track(Func<Task> loop)
    {
        var task = Task.Run(loop);
        _tasks.TryAdd(task, 0);
        _ = task.ContinueWith(t => _tasks.TryRemove(t, out _), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
    }

    private async Task DispatchEventsAsync()
    {
        await foreach (var (peerId, connected) in _events.Reader.ReadAllAsync())
        {
            try
            {
                _onPeerState?.Invoke(peerId, connected);
            }
            catch (Exception e)
            {
                Log($"peer state handler threw: {e}");
            }
        }
    }

    // ---- helpers ----

    private static void Configure(Socket socket)
    {
        socket.NoDelay = true;
        try
        {
            // A vanished peer is detected in about 16 s when idle (keep-alive) ...
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 10);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 2);
            socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
            if (OperatingSystem.IsLinux())
            {
                // ... and in 20 s when writing (TCP_USER_TIMEOUT, IPPROTO_TCP = 6, option 18), instead of the
                // default retransmission limit of about 15 minutes.
                var ms = 20_000;
                socket.SetRawSocketOption(6, 18, MemoryMarshal.AsBytes(new ReadOnlySpan<int>(ref ms)));
            }
        }
        catch (Exception e) when (e is SocketException or PlatformNotSupportedException)
        {
            // Keep-alive tuning is best effort.
        }
    }

    private static async Task SendStatusAsync(Connection conn, HandshakeStatus status, CancellationToken ct)
    {
        try
        {
            await SendAllAsync(conn.Socket, new[] { (byte)status }, ct);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
            // The refused side may be gone already; it is being closed anyway.
        }
    }

    private static async Task SendAllAsync(Socket socket, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (!data.IsEmpty)
        {
            var n = await socket.SendAsync(data, SocketFlags.None, ct);
            data = data[n..];
        }
    }

    private static async Task ReadExactlyAsync(Socket socket, Memory<byte> dst, CancellationToken ct)
    {
        while (!dst.IsEmpty)
        {
            var n = await socket.ReceiveAsync(dst, SocketFlags.None, ct);
            if (n == 0)
            {
                throw new EndOfStreamException("connection closed by the other side during the handshake");
            }

            dst = dst[n..];
        }
    }

    private static string SafeRemote(Socket socket)
    {
        try
        {
            return socket.RemoteEndPoint?.ToString() ?? "?";
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return "?";
        }
    }

    private void Log(string message)
    {
        if (_log is null)
        {
            return;
        }

        try
        {
            _log($"transport {LocalId}: {message}");
        }
        catch (Exception)
        {
            // A failing log sink must not take the transport down.
        }
    }
}
