import Foundation
import Glibc

// unicorn (Debian's libunicorn2) loaded at run time with dlopen, so that the
// package builds and its other tests run where the library is missing. The
// few functions and constants used are declared here from unicorn 2.0's
// <unicorn/unicorn.h> and <unicorn/x86.h>; the header itself is not needed.

/// Whether the unicorn tests run: where libunicorn.so.2 loads, or where
/// SWIFTKVM_REQUIRE_UNICORN=1 (as .ci/run sets it) demands it, so that a
/// missing library fails those tests instead of skipping them unseen.
/// Use as `.enabled(if: UnicornLibrary.isAvailable, Comment(rawValue: UnicornLibrary.skipMessage))`,
/// then `try UnicornLibrary.require()` in the test.
public enum UnicornLibrary {
    public static let package = "libunicorn2"
    public static let skipMessage =
        "libunicorn.so.2 is missing: install Debian's \(package) (apt-get install -y \(package)) to run these tests"

    public static var isRequired: Bool { ProcessInfo.processInfo.environment["SWIFTKVM_REQUIRE_UNICORN"] == "1" }
    public static var isAvailable: Bool { functions != nil || isRequired }

    /// The library's entry points, or nil where it does not load.
    public static let functions: UnicornFunctions? = UnicornFunctions.load()

    public struct Missing: Error, CustomStringConvertible {
        public var description: String {
            "libunicorn.so.2 did not load (\(UnicornFunctions.loadError)); install Debian's \(UnicornLibrary.package)"
        }
    }

    public static func require() throws -> UnicornFunctions {
        guard let functions else { throw Missing() }
        return functions
    }
}

typealias UCOpen = @convention(c) (Int32, Int32, UnsafeMutablePointer<OpaquePointer?>) -> Int32
typealias UCClose = @convention(c) (OpaquePointer) -> Int32
typealias UCMemMapPtr = @convention(c) (OpaquePointer, UInt64, Int, UInt32, UnsafeMutableRawPointer) -> Int32
typealias UCRegWrite = @convention(c) (OpaquePointer, Int32, UnsafeRawPointer) -> Int32
typealias UCRegRead = @convention(c) (OpaquePointer, Int32, UnsafeMutableRawPointer) -> Int32
typealias UCEmuStart = @convention(c) (OpaquePointer, UInt64, UInt64, UInt64, Int) -> Int32
typealias UCEmuStop = @convention(c) (OpaquePointer) -> Int32
typealias UCStrError = @convention(c) (Int32) -> UnsafePointer<CChar>?
typealias UCCtl2 = @convention(c) (OpaquePointer, UInt32, UInt64, UInt64) -> Int32
typealias UCContextAlloc = @convention(c) (OpaquePointer, UnsafeMutablePointer<OpaquePointer?>) -> Int32
typealias UCContext = @convention(c) (OpaquePointer, OpaquePointer) -> Int32
typealias UCContextFree = @convention(c) (OpaquePointer) -> Int32
/// uc_cb_hookintr_t.
typealias UCHookInterrupt = @convention(c) (OpaquePointer?, UInt32, UnsafeMutableRawPointer?) -> Void
/// uc_hook_add is variadic; the extra arguments are only read for
/// UC_HOOK_INSN, so a fixed-arity call with (begin, end) is the same call
/// on x86-64 SysV.
typealias UCHookAdd = @convention(c) (OpaquePointer, UnsafeMutablePointer<Int>, Int32, UnsafeRawPointer, UnsafeMutableRawPointer?,
                                      UInt64, UInt64) -> Int32

/// Function pointers into libunicorn.so.2.
public struct UnicornFunctions: @unchecked Sendable {
    let open: UCOpen
    let close: UCClose
    let memMapPointer: UCMemMapPtr
    let regWrite: UCRegWrite
    let regRead: UCRegRead
    let emuStart: UCEmuStart
    let emuStop: UCEmuStop
    let strerror: UCStrError
    let hookAdd: UCHookAdd
    let ctl: UCCtl2
    let contextAlloc: UCContextAlloc
    let contextSave: UCContext
    let contextRestore: UCContext
    let contextFree: UCContextFree

    nonisolated(unsafe) static var loadError = ""

    static func load() -> UnicornFunctions? {
        guard let handle = dlopen("libunicorn.so.2", RTLD_NOW | RTLD_LOCAL) else {
            loadError = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            return nil
        }
        func symbol<T>(_ name: String, _ type: T.Type) -> T? {
            guard let pointer = dlsym(handle, name) else {
                loadError = "no symbol \(name)"
                return nil
            }
            return unsafeBitCast(pointer, to: type)
        }
        guard let open = symbol("uc_open", UCOpen.self), let close = symbol("uc_close", UCClose.self),
              let memMapPointer = symbol("uc_mem_map_ptr", UCMemMapPtr.self),
              let regWrite = symbol("uc_reg_write", UCRegWrite.self), let regRead = symbol("uc_reg_read", UCRegRead.self),
              let emuStart = symbol("uc_emu_start", UCEmuStart.self), let emuStop = symbol("uc_emu_stop", UCEmuStop.self),
              let strerror = symbol("uc_strerror", UCStrError.self), let hookAdd = symbol("uc_hook_add", UCHookAdd.self),
              let ctl = symbol("uc_ctl", UCCtl2.self),
              let contextAlloc = symbol("uc_context_alloc", UCContextAlloc.self),
              let contextSave = symbol("uc_context_save", UCContext.self),
              let contextRestore = symbol("uc_context_restore", UCContext.self),
              let contextFree = symbol("uc_context_free", UCContextFree.self)
        else { return nil }
        return UnicornFunctions(open: open, close: close, memMapPointer: memMapPointer, regWrite: regWrite, regRead: regRead,
                                emuStart: emuStart, emuStop: emuStop, strerror: strerror, hookAdd: hookAdd, ctl: ctl,
                                contextAlloc: contextAlloc, contextSave: contextSave, contextRestore: contextRestore,
                                contextFree: contextFree)
    }

    func message(_ code: Int32) -> String {
        strerror(code).map { String(cString: $0) } ?? "uc_err \(code)"
    }
}

/// A unicorn failure: the call and unicorn's message.
public struct UnicornError: Error, CustomStringConvertible {
    public var call: String
    public var code: Int32
    public var message: String
    public var description: String { "\(call): \(message) (uc_err \(code))" }
}

/// unicorn's x86 register numbers (uc_x86_reg in <unicorn/x86.h>, 2.0).
public struct UnicornRegister: Hashable, Sendable {
    public let id: Int32
    public init(_ id: Int32) { self.id = id }

    /// RAX..R15 in ModRM order (64-bit mode).
    public static let gpr64: [UnicornRegister] = [35, 38, 40, 37, 44, 36, 43, 39, 106, 107, 108, 109, 110, 111, 112, 113].map { .init($0) }
    /// EAX..EDI in ModRM order (16- and 32-bit modes, where unicorn reads and writes 32 bits).
    public static let gpr32: [UnicornRegister] = [19, 22, 24, 21, 30, 20, 29, 23].map { .init($0) }
    public static let rip = UnicornRegister(41)
    public static let eip = UnicornRegister(26)
    public static let eflags = UnicornRegister(25)
    public static let rflags = UnicornRegister(253)
    /// ES CS SS DS FS GS, in the order of their encoding.
    public static let segments: [UnicornRegister] = [28, 11, 49, 17, 32, 33].map { .init($0) }
    public static let cr0 = UnicornRegister(50)
    public static let idtr = UnicornRegister(242)
    public static let gdtr = UnicornRegister(243)
    public static let fsBase = UnicornRegister(250)
    public static let gsBase = UnicornRegister(251)
    public static let cr4 = UnicornRegister(54)
    /// XMM0..XMM15 (XMM8-15 in 64-bit mode only): 16 bytes each.
    public static let xmm: [UnicornRegister] = (0..<16).map { UnicornRegister(122 + Int32($0)) }
    /// 4 bytes.
    public static let mxcsr = UnicornRegister(249)
}

/// How a step on unicorn ended.
public enum UnicornStep: Equatable, Sendable {
    /// One instruction completed.
    case completed
    /// The instruction raised exception `vector` (UC_HOOK_INTR; #UD comes as UC_ERR_INSN_INVALID, here vector 6).
    case exception(vector: UInt32)
    /// Any other stop: an access outside mapped memory, an unhandled case.
    case error(code: Int32, message: String)
}

/// One unicorn x86 engine over caller-owned memory.
public final class Unicorn {
    public enum Mode: Int32, Sendable {
        /// Real mode, 16-bit code (UC_MODE_16).
        case real16 = 2
        /// Flat protected mode, 32-bit code (UC_MODE_32).
        case protected32 = 4
        /// 64-bit mode, without paging (UC_MODE_64).
        case long64 = 8
    }

    public let mode: Mode
    let functions: UnicornFunctions
    let engine: OpaquePointer
    /// Where the interrupt hook leaves the vector of an exception (-1: none).
    let interrupt: UnsafeMutablePointer<Int64>
    /// The CPU state saved by `saveCleanState`, for `recover`.
    var clean: OpaquePointer?

    /// An engine in `mode` with `size` bytes at `memory` mapped at guest 0;
    /// the caller keeps the memory allocated for the engine's lifetime.
    public init(mode: Mode, memory: UnsafeMutableRawPointer, size: Int) throws {
        functions = try UnicornLibrary.require()
        self.mode = mode
        var engine: OpaquePointer?
        let opened = functions.open(4 /* UC_ARCH_X86 */, mode.rawValue, &engine)
        guard opened == 0, let engine else {
            throw UnicornError(call: "uc_open", code: opened, message: functions.message(opened))
        }
        self.engine = engine
        interrupt = .allocate(capacity: 2)
        interrupt.initialize(repeating: -1, count: 2)
        // The engine pointer rides along for the hook's uc_emu_stop.
        interrupt[1] = Int64(Int(bitPattern: UnsafeRawPointer(engine)))
        try check("uc_mem_map_ptr", functions.memMapPointer(engine, 0, size, 7 /* UC_PROT_ALL */, memory))
        var hook = 0
        let callback: UCHookInterrupt = { _, vector, userData in
            guard let slots = userData?.assumingMemoryBound(to: Int64.self), let functions = UnicornLibrary.functions,
                  let engine = OpaquePointer(bitPattern: Int(slots[1])) else { return }
            slots[0] = Int64(vector)
            // Stop at the exception: unicorn would otherwise resume after it
            // without delivering it through the IDT.
            _ = functions.emuStop(engine)
        }
        try check("uc_hook_add", functions.hookAdd(engine, &hook, 1 /* UC_HOOK_INTR */,
                                                   unsafeBitCast(callback, to: UnsafeRawPointer.self),
                                                   UnsafeMutableRawPointer(interrupt), 1, 0))
    }

    deinit {
        if let clean { _ = functions.contextFree(clean) }
        _ = functions.close(engine)
        interrupt.deallocate()
    }

    func check(_ call: String, _ code: Int32) throws {
        guard code == 0 else { throw UnicornError(call: call, code: code, message: functions.message(code)) }
    }

    /// A register's value, zero-extended (unicorn writes only 2, 4 or 8 bytes of it).
    public func read(_ register: UnicornRegister) -> UInt64 {
        var value: UInt64 = 0
        _ = functions.regRead(engine, register.id, &value)
        return value
    }

    /// Writes a register; unicorn takes as many low bytes as the register has.
    public func write(_ register: UnicornRegister, _ value: UInt64) throws {
        var value = value
        try check("uc_reg_write(\(register.id))", functions.regWrite(engine, register.id, &value))
    }

    /// An XMM register (unicorn reads and writes all 16 bytes).
    public func readXMM(_ register: UnicornRegister) -> UInt128 {
        var value: UInt128 = 0
        _ = functions.regRead(engine, register.id, &value)
        return value
    }

    public func writeXMM(_ register: UnicornRegister, _ value: UInt128) throws {
        var value = value
        try check("uc_reg_write(\(register.id))", functions.regWrite(engine, register.id, &value))
    }

    /// GDTR or IDTR (uc_x86_mmr: selector, base, limit, flags).
    public func writeTable(_ register: UnicornRegister, base: UInt64, limit: UInt32) throws {
        var mmr: (UInt64, UInt64, UInt32, UInt32) = (0, base, limit, 0)
        try check("uc_reg_write(\(register.id))", functions.regWrite(engine, register.id, &mmr))
    }

    /// Saves the CPU state for `recover`: call it once the set-up (GDTR,
    /// segments) is loaded.
    public func saveCleanState() throws {
        if clean == nil {
            var context: OpaquePointer?
            try check("uc_context_alloc", functions.contextAlloc(engine, &context))
            clean = context
        }
        guard let clean else { return }
        try check("uc_context_save", functions.contextSave(engine, clean))
    }

    /// Returns to the state `saveCleanState` saved, after an exception. The
    /// hook stops unicorn before it delivers an exception, which leaves
    /// QEMU's "exception in flight" (old_exception) set: the next
    /// contributory exception would then be reported as a double fault.
    /// The saved context predates it. Registers must be loaded again after.
    public func recover() throws {
        guard let clean else { return }
        try check("uc_context_restore", functions.contextRestore(engine, clean))
    }

    /// Drops the translations that cover `address`: a translation made
    /// before runs through the address `step` should stop at.
    public func forgetTranslations(at address: UInt64) throws {
        // UC_CTL_WRITE(UC_CTL_TB_REMOVE_CACHE, 2)
        try check("uc_ctl(TB_REMOVE_CACHE)", functions.ctl(engine, 0x4800_0009, address, address &+ 1))
    }

    /// Drops translated code: unicorn does not notice code rewritten from outside.
    public func flushTranslations() throws {
        // UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0); the two extra arguments are ignored.
        try check("uc_ctl(TB_FLUSH)", functions.ctl(engine, 0x4000_000A, 0, 0))
    }

    /// Executes one instruction at `address` (a linear address: CS base +
    /// IP in real mode), stopping when the next instruction would start at
    /// `until`. Stopping at an address is fifty times faster than counting
    /// one instruction, which needs a hook and flushes the translations on
    /// every call; `timeout` (microseconds, 0: none) bounds an instruction
    /// whose next address is only a guess (a branch: unicorn may go
    /// elsewhere); `countOne` stops after one instruction (slow), for a
    /// branch to itself.
    public func step(at address: UInt64, until: UInt64, timeout: UInt64 = 0, countOne: Bool = false) -> UnicornStep {
        interrupt[0] = -1
        let code = functions.emuStart(engine, address, until, timeout, countOne ? 1 : 0)
        if interrupt[0] >= 0 { return .exception(vector: UInt32(interrupt[0])) }
        if code == 10 /* UC_ERR_INSN_INVALID */ { return .exception(vector: 6) }
        if code != 0 { return .error(code: code, message: functions.message(code)) }
        return .completed
    }
}
