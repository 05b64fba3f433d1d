import ArgumentParser
import Glibc

/// `swiftkvm exec -- PROGRAM ARGS...`: runs an unmodified program written
/// for /dev/kvm on SoftKVM, by preloading libKVMPreload.so into it.
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a program written for /dev/kvm on SoftKVM (LD_PRELOAD of libKVMPreload.so).",
        discussion: "The program replaces swiftkvm, so its exit status (or its signal) is the command's.")

    @Argument(parsing: .captureForPassthrough, help: "The program and its arguments, after --.")
    var command: [String] = []

    /// The library is built next to the swiftkvm executable (.build/<config>/).
    static let libraryName = "libKVMPreload.so"

    var program: [String] { command.first == "--" ? Array(command.dropFirst()) : command }

    func validate() throws {
        guard !program.isEmpty else { throw ValidationError("no program to run: swiftkvm exec -- PROGRAM ARGS...") }
    }

    func run() throws {
        let library = try Exec.libraryPath()
        // Earlier preloads stay, after ours: a program's own interposers then see SoftKVM's descriptors as plain ones.
        let preload = getenv("LD_PRELOAD").map { library + " " + String(cString: $0) } ?? library
        setenv("LD_PRELOAD", preload, 1)
        let arguments = program.map { strdup($0) } + [nil]
        execvp(program[0], arguments)
        let error = errno
        printError("cannot run \(program[0]): \(String(cString: strerror(error)))")
        // The shell's convention: 127 for a program not found, 126 for one that cannot run.
        throw ExitCode(error == ENOENT ? 127 : 126)
    }

    static func libraryPath() throws -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else {
            printError("cannot find the swiftkvm executable: \(String(cString: strerror(errno)))")
            throw ExitCode(126)
        }
        let executable = String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let directory = executable.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let library = directory + "/" + libraryName
        guard access(library, R_OK) == 0 else {
            printError("\(library) is missing: build it with `swift build --product KVMPreload`")
            throw ExitCode(126)
        }
        return library
    }
}
