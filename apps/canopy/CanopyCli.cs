using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using Canopy.Cli.Commands;

namespace Canopy.Cli;

/// <summary>
/// Builds the command tree, parses, invokes, and turns every failure into one line on stderr and an exit code:
/// 2 for a wrong command line, 1 for a failed command, 130 when interrupted. Set CANOPY_DEBUG=1 to also get
/// the full exception.
/// </summary>
public static class CanopyCli
{
    public const string Name = "canopy";

    public static RootCommand BuildRootCommand()
    {
        var root = new RootCommand(
            "Canopy: one Godot game world replicated across a cluster of .NET servers (multi-range Raft).");
        root.Subcommands.Add(SimCommand.Build());
        root.Subcommands.Add(StartCommand.BuildStart());
        root.Subcommands.Add(StartCommand.BuildSingleNode());
        root.Subcommands.Add(RaftNodeCommand.Build());
        var bench = BenchRaftCommand.Build();
        bench.Subcommands.Add(BenchKvCommand.Build());
        bench.Subcommands.Add(BenchCommitCommand.Build());
        root.Subcommands.Add(bench);
        root.Subcommands.Add(InitCommand.Build());
        root.Subcommands.Add(KvCommand.Build());
        root.Subcommands.Add(RangeCommand.Build());
        root.Subcommands.Add(NodeCommand.Build());
        root.Subcommands.Add(WorkloadCommand.Build());
        root.Subcommands.Add(TreeCommand.Build());
        return root;
    }

    public static async Task<int> RunAsync(string[] args, TextWriter output, TextWriter error)
    {
        try
        {
            var root = BuildRootCommand();

            // `canopy` alone shows the help rather than an error.
            var parseResult = root.Parse(args.Length == 0 ? ["--help"] : args);

            if (parseResult.Action is not HelpAction && parseResult.Errors.Count > 0)
            {
                error.WriteLine($"{Name}: {DescribeParseError(parseResult)}");
                return ExitCodes.Usage;
            }

            var configuration = new InvocationConfiguration
            {
                Output = output,
                Error = error,
                EnableDefaultExceptionHandler = false,
            };
            return await parseResult.InvokeAsync(configuration);
        }
        catch (Exception ex)
        {
            return Report(ex, error);
        }
    }

    /// <summary>Maps an exception to one line on <paramref name="error"/> and an exit code.</summary>
    public static int Report(Exception ex, TextWriter error)
    {
        // Parallel work (e.g. seeds run on every core) wraps failures: report the first real one.
        if (ex is AggregateException aggregate && aggregate.Flatten().InnerExceptions is [var first, ..])
        {
            ex = first;
        }

        int code;
        string message;
        switch (ex)
        {
            case CliException cli:
                code = cli.ExitCode;
                message = cli.Message;
                break;
            case OperationCanceledException:
                code = ExitCodes.Interrupted;
                message = "interrupted";
                break;
            default:
                // Errors of the other layers (a store in use, an unreachable host, I/O, ...): their message is the line.
                code = ExitCodes.Failure;
                message = ex.Message;
                break;
        }

        error.WriteLine($"{Name}: {OneLine(message)}");
        if (IsDebug)
        {
            error.WriteLine(ex.ToString());
        }

        return code;
    }

    private static bool IsDebug =>
        Environment.GetEnvironmentVariable("CANOPY_DEBUG") is { Length: > 0 } v && v != "0";

    private static string OneLine(string message)
    {
        var line = message.ReplaceLineEndings(" ").Trim();
        return line.Length == 0 ? "failed" : line;
    }

    /// <summary>The first parse error as one line, with a pointer to the right --help.</summary>
    internal static string DescribeParseError(ParseResult parseResult)
    {
        var commandResult = parseResult.CommandResult;
        var command = commandResult.Command;
        var path = CommandPath(commandResult);
        var seeHelp = $"(see {path} --help)";

        if (parseResult.UnmatchedTokens.Count > 0)
        {
            var token = parseResult.UnmatchedTokens[0];
            if (token.StartsWith('-'))
            {
                return $"unknown option '{token}' for '{path}' {seeHelp}";
            }

            if (command.Subcommands.Count > 0)
            {
                var where = command is RootCommand ? "" : $" for '{path}'";
                var suggestion = Suggest(token, command.Subcommands.Where(c => !c.Hidden).Select(c => c.Name));
                var hint = suggestion is null ? "" : $"; did you mean '{suggestion}'?";
                return $"unknown command '{token}'{where}{hint} {seeHelp}";
            }

            return $"unexpected argument '{token}' for '{path}' {seeHelp}";
        }

        if (command.Action is null && command.Subcommands.Count > 0)
        {
            return $"'{path}' needs a command {seeHelp}";
        }

        var message = parseResult.Errors[0].Message.Trim().TrimEnd('.');
        if (message.Length > 1 && char.IsUpper(message[0]) && !char.IsUpper(message[1]))
        {
            message = char.ToLowerInvariant(message[0]) + message[1..];
        }

        return $"{OneLine(message)} {seeHelp}";
    }

    private static string CommandPath(CommandResult result)
    {
        var names = new List<string>();
        for (SymbolResult? r = result; r is not null; r = r.Parent)
        {
            if (r is CommandResult c)
            {
                names.Add(c.Command is RootCommand ? Name : c.Command.Name);
            }
        }

        names.Reverse();
        return string.Join(' ', names);
    }

    /// <summary>The closest candidate within an edit distance of 2, if any.</summary>
    private static string? Suggest(string token, IEnumerable<string> candidates)
    {
        string? best = null;
        var bestDistance = 3;
        foreach (var candidate in candidates)
        {
            var d = EditDistance(token.ToLowerInvariant(), candidate);
            if (d < bestDistance)
            {
                best = candidate;
                bestDistance = d;
            }
        }

        return best;
    }

    private static int EditDistance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++)
        {
            previous[j] = j;
        }

        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
            {
                var cost = a[i - 1] == b[j - 1] ? 0 : 1;
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + cost);
            }

            (previous, current) = (current, previous);
        }

        return previous[b.Length];
    }
}
