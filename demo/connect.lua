-- demo/connect.lua -- owns the sysbench client of scripts/demo: a sysbench 1.0.20
-- Lua test whose every event connects (sysbench.sql.driver():connect()), runs one
-- SELECT, reads the row and disconnects.  Nothing in here knows about poolshim.
--
-- sysbench demo/connect.lua --db-driver=mysql --mysql-host=... --mysql-port=...
--   --mysql-user=... --mysql-password=... --mysql-db=... --threads=8 --events=N
--   --time=0 run
-- A failed event (connect, query or wrong answer) is counted, not fatal; each
-- thread prints "demo_thread_errors=N" at the end, and sysbench its usual report.

local drv            -- this thread's driver handle (sysbench.sql.driver())
local errors = 0     -- failed events of this thread
local shown = 0      -- failures printed so far by this thread

function thread_init()
   drv = sysbench.sql.driver()
end

local function one_request()
   local con = drv:connect()
   local ok, err = pcall(function()
      local rs = con:query("SELECT 1 + 1")
      local row = rs:fetch_row()
      if row == nil or tonumber(row[1]) ~= 2 then
         error("wrong answer: " .. tostring(row and row[1]))
      end
      rs:free()
   end)
   con:disconnect()
   if not ok then error(err, 0) end
end

function event()
   local ok, err = pcall(one_request)
   if not ok then
      errors = errors + 1
      if shown < 3 then
         shown = shown + 1
         io.stderr:write("connect.lua: event failed: " .. tostring(err) .. "\n")
      end
   end
end

function thread_done()
   print(string.format("demo_thread_errors=%d", errors))
end
