"""`python -m devkit.demo [--lang kk|ru] [--quick]`: the whole Rastau story on one machine, nothing to configure.

The real verification server (HTTP on 127.0.0.1, real face workers) and the real bot (aiogram, long polling)
run against a local Bot API stand-in, on a fresh SQLite file, with a clock the story moves forward. The
scheduler's jobs (close windows, deliver, daily digest) are run by the story each time the clock moves,
exactly the functions APScheduler calls in production.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bot.app import create_bot, create_dispatcher
from bot.channels.sms import SmsChannel
from bot.channels.sms_webhook import SmsWebhook
from bot.channels.whatsapp import WhatsAppRuntime
from bot.delivery.dispatcher import OutboxDispatcher
from bot.delivery.webhook import PayerWebhookSender
from bot.i18n import make_i18n
from bot.rendering import OutboxRenderer
from bot.scheduling import auditor_summary_job, close_windows_job, daily_digest_job
from core.channels import ChannelName
from core.clock import ALMATY, ManualClock
from core.config import Settings
from core.db.engine import create_engine
from core.db.migrate import upgrade_to_head
from core.db.uow import UnitOfWorkFactory
from core.iin import make_iin
from core.liveness import Pose
from core.logs import configure_logging
from core.services import Context, auditors, registry
from core.services.api_keys import create_api_key
from devkit.botapi import BotApiStandIn, Sent
from devkit.liveness_clips import Shot, camera_frame, shots
from devkit.payer import PayerStandIn
from devkit.phone import Phone, buttons, plain
from devkit.sms_gateway import SmsGatewayStandIn
from devkit.whatsapp import WaSent, WhatsAppStandIn, add_rastau_templates
from server.app import create_app
from server.appkeys import FaceAnalyser

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "faces"
BOT_TOKEN = "777000:rastau-demo-token"
PAGE_INTERVAL_S = 0.2  # server/static/capture.js: MIN_INTERVAL_MS, a frame no sooner than this after the last
CODE = re.compile(r"\b(\d{6})\b")
WEB_LINK = re.compile(r"https?://\S+/web/signin/[A-Za-z0-9_-]{43}")

NARRATION = {
    "ru": {
        "title": "Растау — вся история за одну минуту (сервер, бот и лица настоящие; Telegram — локальная подмена)",
        "setup": "1. Клиника регистрирует врача, администратора и двух пациентов; лица пациентов — с фото",
        "link": "   Пациенты, врач, администратор и аудитор плательщика подключают бота",
        "family": "   Номер Дмитрия — семейный: на него записана и его мать, Мария Ковалева. Каждое сообщение в этом "
                  "чате называет, о ком оно",
        "visits": "2. Клиника записывает на завтра очный приём, онлайн-консультацию и ещё три очных приёма",
        "morning": "3. Завтра, 08:50: за 10 минут до приёма пациент получает код",
        "webcam": "   09:02, кабинет врача: веб-камера",
        "whatsapp_link": "   Бауыржан пишет на номер поликлиники в WhatsApp: номер подтверждает сам WhatsApp, "
                         "и бот подключает его сразу",
        "whatsapp_code": "   09:20: код к приёму D приходит Бауыржану в WhatsApp — шаблон с кнопкой «Скопировать код»; "
                         "WhatsApp сообщает, что код доставлен",
        "online": "4. 09:58: врач просит код для онлайн-консультации; пациент называет его",
        "answers": "5. После приёмов бот спрашивает: «Вы были на приёме?»",
        "digest": "6. Следующее утро, 08:00: администратор получает сводку за вчера",
        "auditor": "7. В то же утро аудитор плательщика видит свой день: спор о приёме C пришёл ему сразу, "
                   "а сводка — с красными флагами клиники (в демо доли считаются уже с 1 приёма, в жизни — с 20)",
        "payer": "   Система плательщика получила по вебхуку подписанные события",
        "dashboard": "8. Администратор и аудитор пишут боту /web и открывают веб-панель по одноразовой ссылке",
        "dashboard_link": "   Веб-панель, вход для {name}: {url}",
        "serve": "Сервер работает: откройте ссылки выше в браузере. Нажмите Enter, чтобы остановить.",
        "summary": "Итог: чем подтверждён каждый приём",
        "single_frame": "один кадр от МИС (любое фото пациента прошло бы)",
        "capture_open": "страница проверки открыта на компьютере врача",
        "photo_held_up": "к камере поднесли фото пациентки, двигают и поворачивают его",
        "live_patient": "пациентка сама перед камерой и выполняет указания",
        "asked": "страница просит",
        "poses": {"straight": "прямо", "left": "влево", "right": "вправо"},
        "capture_online": "проверка камерой для онлайн-консультации",
        "clinic_enters": "клиника вводит код в МИС",
        "never_came": "пациент на третий приём не пришёл; код не введён, окно закрылось",
        "reason": "Меня в этот день не было в городе",
        "stray": "Подскажите, когда мой следующий приём?",
        "stray_note": "   Позже Дмитрий пишет боту вопрос — это не причина спора, и администраторам он не уходит "
                      "(им и аудитору пришло сообщений: {n})",
        "headers": ("приём", "пациент", "формат", "состояние", "доказательство", "ответ пациента", "канал"),
        "sms_code": "   09:35: у Гүлжан нет мессенджера — код к приёму E приходит ей по SMS (один сегмент)",
        "sms_answer": "   Вопрос о приёме E пришёл Гүлжан по SMS; она отвечает цифрой",
        "values": {"in_person": "очно", "online": "онлайн", "patient_confirmed": "подтверждён пациентом",
                   "patient_disputed": "оспорен пациентом", "unverified": "не подтверждён", "verified": "подтверждён",
                   "scheduled": "запланирован", "cancelled": "отменён", "face": "лицо, один кадр",
                   "face_live": "лицо, живая проверка", "code": "код",
                   "confirmed": "«да, был»", "disputed": "«меня там не было»", "claimed_attended": "«да, был»",
                   "none": "нет ответа", None: "нет"},
    },
    "kk": {
        "title": "Растау — бүкіл оқиға бір минутта (сервер, бот және беттер нақты; Telegram — жергілікті алмастырғыш)",
        "setup": "1. Емхана дәрігерді, әкімшіні және екі пациентті тіркейді; пациенттердің беті фотодан алынады",
        "link": "   Пациенттер, дәрігер, әкімші және төлеуші аудиторы ботқа қосылады",
        "family": "   Дмитрийдің нөмірі — отбасылық: оған анасы Мария Ковалева да тіркелген. Бұл чаттағы әр "
                  "хабарлама кім туралы екенін атайды",
        "visits": "2. Емхана ертеңге бетпе-бет қабылдауды, онлайн-кеңесті және тағы үш бетпе-бет қабылдауды жазады",
        "morning": "3. Ертең, 08:50: қабылдаудан 10 минут бұрын пациент кодты алады",
        "webcam": "   09:02, дәрігер кабинеті: веб-камера",
        "whatsapp_link": "   Бауыржан емхананың WhatsApp нөміріне жазады: нөмірін WhatsApp-тың өзі растайды, "
                         "сондықтан бот оны бірден қосады",
        "whatsapp_code": "   09:20: D қабылдауының коды Бауыржанға WhatsApp арқылы келеді — «Кодты көшіру» батырмасы "
                         "бар үлгі; WhatsApp кодтың жеткенін хабарлайды",
        "online": "4. 09:58: дәрігер онлайн-кеңеске код сұрайды; пациент оны айтады",
        "answers": "5. Қабылдаудан кейін бот сұрайды: «Қабылдауда болдыңыз ба?»",
        "digest": "6. Келесі таң, 08:00: әкімші кешегі есепті алады",
        "auditor": "7. Сол таңда төлеуші аудиторы өз күнін көреді: C қабылдауы бойынша дау оған бірден жеткен, "
                   "ал қорытынды емхананың қызыл жалаушаларымен келді (демода үлестер 1 қабылдаудан, өмірде 20-дан)",
        "payer": "   Төлеушінің жүйесі вебхук арқылы қол қойылған оқиғаларды алды",
        "dashboard": "8. Әкімші мен аудитор ботқа /web деп жазып, веб-тақтаға бір реттік сілтемемен кіреді",
        "dashboard_link": "   Веб-тақта, {name} үшін кіру сілтемесі: {url}",
        "serve": "Сервер жұмыс істеп тұр: жоғарыдағы сілтемелерді браузерде ашыңыз. Тоқтату үшін Enter басыңыз.",
        "summary": "Қорытынды: әр қабылдау немен расталды",
        "single_frame": "МАЖ-дан бір кадр (пациенттің кез келген суреті өтіп кетер еді)",
        "capture_open": "тексеру беті дәрігердің компьютерінде ашылды",
        "photo_held_up": "камераға пациенттің суретін тосып, оны жылжытып, бұрып жатыр",
        "live_patient": "пациенттің өзі камера алдында отыр, нұсқауларды орындайды",
        "asked": "бет сұрайды",
        "poses": {"straight": "тура", "left": "солға", "right": "оңға"},
        "capture_online": "онлайн-кеңесті камерамен тексеру",
        "clinic_enters": "емхана кодты МАЖ-ға енгізеді",
        "never_came": "пациент үшінші қабылдауға келмеді; код енгізілмеді, терезе жабылды",
        "reason": "Мен ол күні қалада болмадым",
        "stray": "Келесі қабылдауым қашан екенін айтып бересіз бе?",
        "stray_note": "   Кейін Дмитрий ботқа сұрақ жазады — бұл себеп емес, әкімшілерге жіберілмейді "
                      "(оларға және аудиторға келген хабарлама саны: {n})",
        "headers": ("қабылдау", "пациент", "түрі", "күйі", "дәлел", "пациенттің жауабы", "арна"),
        "sms_code": "   09:35: Гүлжанда мессенджер жоқ — E қабылдауының коды оған SMS арқылы келеді (бір сегмент)",
        "sms_answer": "   E қабылдауы туралы сұрақ Гүлжанға SMS арқылы келді; ол цифрмен жауап береді",
        "values": {"in_person": "бетпе-бет", "online": "онлайн", "patient_confirmed": "пациент растады",
                   "patient_disputed": "пациент дауласты", "unverified": "расталмаған", "verified": "расталған",
                   "scheduled": "жоспарланған", "cancelled": "болдырылмаған", "face": "бет, бір кадр",
                   "face_live": "бет, тірі тексеру", "code": "код",
                   "confirmed": "«иә, болдым»", "disputed": "«мен онда болмадым»",
                   "claimed_attended": "«иә, болдым»", "none": "жауап жоқ", None: "жоқ"},
    },
}


@dataclass(frozen=True)
class Evidence:
    """One row of the final table: what stands behind a billed visit."""
    label: str
    patient: str
    mode: str
    state: str
    verified_by: str | None
    answer: str
    channel: str = "telegram"  # issue 14: the channel that reached the patient (their code's or question's row)



class Story:
    """Everything the demo runs, started in order and stopped in reverse."""

    def __init__(self, lang: str, out, pace: float, face_pool: FaceAnalyser | None = None):
        self.lang, self.say, self.pace = lang, NARRATION[lang], pace
        self.out = out
        self.face_pool = face_pool  # None: the server starts its own face worker, as `python -m server` does
        self._tmp = tempfile.TemporaryDirectory(prefix="rastau-demo-")
        local_today = dt.datetime.now(ALMATY).date()
        self.day = local_today + dt.timedelta(days=1)
        self.clock = ManualClock(dt.datetime.combine(local_today, dt.time(18, 0), tzinfo=ALMATY))
        self.secrets: list[str] = [BOT_TOKEN]  # every secret value the story used, for the log audit test

    # --- printing ---------------------------------------------------------------------------------------

    def line(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def heading(self, key: str) -> None:
        local = self.clock.now().astimezone(ALMATY)
        self.line()
        self.line(f"── {self.say[key]}  [{local:%Y-%m-%d %H:%M} Asia/Almaty]")

    def show_message(self, phone: Phone, message: Sent) -> None:
        if message.document:
            filename, data = message.document
            rows = data.decode("utf-8", "replace").count("\n") - 1
            self.line(f"   🤖 → {phone.name}: 📎 {filename} ({rows} rows)  {plain(message.text)}")
            return
        text = plain(message.text).strip().replace("\n", "\n" + " " * (9 + len(phone.name)))
        self.line(f"   🤖 → {phone.name}: {text}")
        shown = [label for label, _ in buttons(message)]
        if shown:
            self.line(" " * (9 + len(phone.name)) + "  ".join(f"[{label}]" for label in shown))

    def show_action(self, phone: Phone, action: str) -> None:
        self.line(f"   👤 {phone.name}: {action}")

    async def pause(self) -> None:
        if self.pace:
            await asyncio.sleep(self.pace)

    # --- lifecycle --------------------------------------------------------------------------------------

    web_links: list[tuple[str, str]]  # (who, sign-in URL) from /web, printed at the end

    async def __aenter__(self) -> Story:
        self.web_links = []
        self.api = BotApiStandIn(bot_id=int(BOT_TOKEN.split(":")[0]), username="rastau_demo_bot")
        await self.api.start()
        self.payer = PayerStandIn(secrets.token_urlsafe(24))
        await self.payer.start()
        self.wa = WhatsAppStandIn(access_token=secrets.token_urlsafe(24), app_secret=secrets.token_urlsafe(24),
                                  clock=lambda: self.clock.now().timestamp())
        add_rastau_templates(self.wa)
        await self.wa.start()
        self.wa_shown = 0
        self.sms_gateway = SmsGatewayStandIn(password=secrets.token_urlsafe(16))  # issue 14: SMS for no messenger
        await self.sms_gateway.start()
        sms_secret = secrets.token_urlsafe(24)
        self.secrets += [self.sms_gateway.password, sms_secret]
        self.secrets += [self.wa.access_token, self.wa.app_secret]
        self.secrets.append(self.payer.secret)
        self.settings = Settings(_env_file=None, mode="dev", database_url=f"sqlite+aiosqlite:///{self._tmp.name}/demo.db",
                                 code_hmac_key=secrets.token_urlsafe(32), template_key=secrets.token_urlsafe(32),
                                 api_key_pepper=secrets.token_urlsafe(32), bot_token=BOT_TOKEN,
                                 telegram_api_base=self.api.base_url, face_workers=1, log_level="WARNING",
                                 liveness_stills=True,  # the fixture photos turn ~10-20°: see docs/liveness.md
                                 payer_webhook_url=self.payer.url, payer_webhook_secret=self.payer.secret,
                                 flag_min_visits=1,  # a short day raises the share flags (production: 20)
                                 whatsapp_phone_number_id=self.wa.phone_number_id,
                                 whatsapp_access_token=self.wa.access_token, whatsapp_app_secret=self.wa.app_secret,
                                 whatsapp_verify_token=secrets.token_urlsafe(24), whatsapp_api_base=self.wa.base_url,
                                 sms_gateway_url=self.sms_gateway.base_url, sms_login=self.sms_gateway.login,
                                 sms_password=self.sms_gateway.password, sms_inbound_secret=sms_secret)
        self.engine = create_engine(self.settings.database_url)
        await upgrade_to_head(self.engine)
        self.ctx = Context.build(self.settings, UnitOfWorkFactory(self.engine), self.clock)
        self.runner = web.AppRunner(create_app(self.settings, ctx=self.ctx, face_pool=self.face_pool), access_log=None,
                                    handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.server_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self.ctx.settings = self.settings = self.settings.model_copy(update={"public_url": self.server_url})  # /web
        i18n = make_i18n()
        self.bot = create_bot(BOT_TOKEN, self.api.base_url, timeout=10)
        self.dp = create_dispatcher(self.ctx, i18n)
        self.whatsapp = WhatsAppRuntime(self.ctx, i18n)  # its webhook, channel and inbox, as the bot runs them
        self.wa.webhook_url = (f"http://127.0.0.1:{await self.whatsapp.serve('127.0.0.1', 0)}"
                               f"{self.settings.whatsapp_webhook_path}")
        self.sms = SmsChannel(self.ctx, i18n)
        sms_app = web.Application()
        SmsWebhook(self.ctx).register(sms_app, self.settings.sms_inbound_path)  # replies "1"/"0", signed
        self.sms_runner = web.AppRunner(sms_app, access_log=None, handle_signals=False)
        await self.sms_runner.setup()
        sms_site = web.TCPSite(self.sms_runner, "127.0.0.1", 0)
        await sms_site.start()
        self.sms_inbound = (f"http://127.0.0.1:{sms_site._server.sockets[0].getsockname()[1]}"
                            f"{self.settings.sms_inbound_path}")
        self.sms_secret = sms_secret
        renderer = OutboxRenderer(self.ctx, i18n, channels=frozenset(ChannelName))
        self.dispatcher = OutboxDispatcher(self.ctx, self.bot, renderer, worker_id="demo",
                                           rate_global=self.settings.send_rate_global,
                                           rate_per_chat=self.settings.send_rate_per_chat,
                                           channels={ChannelName.WHATSAPP: self.whatsapp.channel,
                                                     ChannelName.SMS: self.sms})
        self.polling = asyncio.create_task(self.dp.start_polling(self.bot, handle_signals=False,
                                                                 close_bot_session=False, polling_timeout=1))
        self.http = aiohttp.ClientSession(self.server_url)
        self.webhook = PayerWebhookSender(self.ctx, worker_id="demo")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.close()
        await self.webhook.close()
        await self.payer.stop()
        await self.dp.stop_polling()
        await asyncio.wait_for(self.polling, timeout=10)
        await self.bot.session.close()
        await self.whatsapp.close()
        await self.wa.stop()
        await self.sms.close()
        await self.sms_runner.cleanup()
        await self.sms_gateway.stop()
        await self.runner.cleanup()
        await self.engine.dispose()
        await self.api.stop()
        self._tmp.cleanup()

    # --- the clinic's systems ---------------------------------------------------------------------------

    async def call(self, method: str, path: str, key: str, **kwargs) -> tuple[int, dict | str]:
        headers = {"Authorization": f"Bearer {key}", **kwargs.pop("headers", {})}
        async with self.http.request(method, "/api/v1" + path, headers=headers, **kwargs) as response:
            body = await (response.json() if response.content_type.endswith("json") else response.text())
            return response.status, body

    async def post_frame(self, visit_id: int, photo: str) -> tuple[int, str]:
        status, body = await self.call("POST", f"/visits/{visit_id}/face", self.webcam_key,
                                       data=(PHOTOS / photo).read_bytes(), headers={"Content-Type": "image/jpeg"})
        return status, body.get("decision") or body.get("code", "")

    async def capture(self, visit_id: int, frame_for: Callable[[Pose], bytes]) -> tuple[list[str], dict]:
        """What the capture page does, over the same WebSocket: open a session, answer every step the server asks
        for with a camera frame (``frame_for(pose)``), at most one every PAGE_INTERVAL_S as the page sends them,
        until the server's outcome."""
        status, session = await self.call("POST", f"/visits/{visit_id}/capture-sessions", self.webcam_key)
        assert status == 201, session
        self.secrets.append(session["url"].rsplit("/", 1)[1])
        path = "/" + session["url"].split("/", 3)[3]
        self.line(f"   📷 POST /visits/{visit_id}/capture-sessions → {status}: {self.say['capture_open']} "
                  f"(/capture/…, {session['language']})")
        asked: list[str] = []
        loop, last_sent = asyncio.get_running_loop(), -PAGE_INTERVAL_S
        async with self.http.ws_connect(path + "/ws") as socket:
            while (message := await socket.receive_json(timeout=30))["type"] == "step":
                if not asked or asked[-1] != message["pose"]:
                    asked.append(message["pose"])
                await asyncio.sleep(max(0.0, last_sent + PAGE_INTERVAL_S - loop.time()))  # the page's pace
                await socket.send_bytes(frame_for(Pose(message["pose"])))
                last_sent = loop.time()
        return asked, message

    async def whatsapp_settle(self, name: str) -> None:
        """Every webhook answered and handled (the bot's inbox worker, run here by the story), then what reached
        the patient's WhatsApp shown, with the delivery status WhatsApp reported."""
        for _ in range(3):
            await self.wa.settle()
            await self.whatsapp.inbox.drain()
        for message in self.wa.sent[self.wa_shown:]:
            self.show_whatsapp(name, message)
        self.wa_shown = len(self.wa.sent)

    def show_whatsapp(self, name: str, message: WaSent) -> None:
        ticks = {"delivered": " ✓✓", "read": " ✓✓ (прочитано)" if self.lang == "ru" else " ✓✓ (оқылды)"}
        if message.template is not None:
            what = f"📋 {message.template[0]} ({message.template[1]}): " + " · ".join(message.text.split(" ", 1)[1:])
        else:
            what = message.text.replace("\n\n", " / ")
        self.line(f"   🟢 WhatsApp → {name}: {what}{ticks.get(message.status, '')}")
        kinds = {"quick_reply": None, "url": "⧉"}
        shown = [kinds.get(c.get("sub_type")) for c in message.body.get("template", {}).get("components", [])
                 if c.get("type") == "button"]
        if message.type == "interactive":
            shown = [b["reply"]["title"] for b in message.body["interactive"]["action"]["buttons"]]
        labels = [label or ("✅" if i == 0 else "❌") for i, label in enumerate(shown)]
        if labels:
            self.line(" " * (17 + len(name)) + "  ".join(f"[{label}]" for label in labels))

    async def run_jobs(self) -> None:
        """What the scheduler does after the clock moved: close windows, then deliver everything due."""
        await close_windows_job(self.ctx)
        await self.dispatcher.drain()

    async def deliver_until(self, phone: Phone, timeout: float = 10.0) -> None:
        """The scheduler's delivery tick, repeated until the bot has sent `phone` something new."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(phone.inbox()) <= phone.seen and asyncio.get_running_loop().time() < deadline:
            await self.dispatcher.drain()
            await asyncio.sleep(0.05)

    async def move_to(self, day: dt.date, hour: int, minute: int) -> None:
        self.clock.set(dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ALMATY))
        await self.run_jobs()

    # --- the story --------------------------------------------------------------------------------------

    async def play(self) -> list[Evidence]:
        self.line(self.say["title"])
        self.heading("setup")
        clinic = await registry.create_clinic(self.ctx, "№5 емхана" if self.lang == "kk" else "Поликлиника № 5")
        doctor = await registry.add_doctor(self.ctx, clinic.id, "Айдос Сейтқали", "+7 701 111 22 33")
        admin = await registry.add_admin(self.ctx, clinic.id, "Гүлнара Ахметова", "+7 702 555 44 33")
        auditor = await auditors.add_auditor(self.ctx, "Сәуле Жұмабаева", "+7 708 100 20 30", clinic_ids=[clinic.id],
                                             language=self.lang)  # the payer's, made by the operator
        self.mis_key = (await create_api_key(self.ctx, clinic.id, ["clinic_system"], label="МИС")).key
        self.webcam_key = (await create_api_key(self.ctx, clinic.id, ["webcam"], label="кабинет 12")).key
        self.admin_key = (await create_api_key(self.ctx, clinic.id, ["admin"], label="admin")).key
        self.secrets += [self.mis_key, self.webcam_key, self.admin_key,
                         *(v.get_secret_value() for v in (self.settings.code_hmac_key, self.settings.template_key,
                                                          self.settings.api_key_pepper))]
        people = {"aigerim": ("Әйгерім Нұрланқызы", "+7 705 123 45 67", make_iin(dt.date(1990, 4, 12), False, 1),
                              "obama", ["obama1.jpg", "obama3.jpg"]),
                  "dmitry": ("Дмитрий Ковалев", "+7 707 765 43 21", make_iin(dt.date(1975, 9, 3), True, 77),
                             "biden", ["biden1.jpg"]),
                  # issue 17: his mother on his phone, a family number; every message there names its patient
                  "maria": ("Ковалева Мария Петровна", "+7 707 765 43 21", make_iin(dt.date(1950, 1, 15), False, 8),
                            "", []),
                  # on WhatsApp only, no face enrolled: his visit is verified by the code
                  "baurzhan": ("Бауыржан Сапаров", "+7 747 321 65 40", make_iin(dt.date(1958, 2, 20), True, 5),
                               "", []),
                  # issue 14: no messenger at all, no face enrolled: SMS to her registered phone
                  "gulzhan": ("Гүлжан Әбенова", "+7 701 555 12 34", make_iin(dt.date(1949, 6, 1), False, 6), "", [])}
        patient_ids = {}
        self.secrets += [person[2] for person in people.values()]
        for name, (full_name, phone, iin, folder, photos) in people.items():
            status, patient = await self.call("POST", "/patients", self.mis_key, json={
                "iin": iin, "full_name": full_name, "phone": phone, "language": self.lang})
            assert status == 201, patient
            patient_ids[name] = patient["id"]
            await self.call("POST", f"/patients/{patient['id']}/consent", self.mis_key,
                            json={"recorded_by": "медбике Сәуле" if self.lang == "kk" else "медсестра Сауле"})
            if not photos:
                self.line(f"   МИС → POST /patients, /consent: {full_name}")
                continue
            form = aiohttp.FormData()
            for photo in photos:
                form.add_field("image", (PHOTOS / folder / photo).read_bytes(), filename=photo,
                               content_type="image/jpeg")
            status, enrolled = await self.call("PUT", f"/patients/{patient['id']}/face", self.mis_key, data=form)
            assert status == 200, enrolled
            self.line(f"   МИС → POST /patients, /consent, PUT /face: {full_name} — {enrolled['enrolled']} "
                      f"({', '.join(photos)})")

        self.heading("link")
        self.aigerim = self.phone(1001, "Әйгерім", people["aigerim"][1])
        self.dmitry = self.phone(1002, "Дмитрий", people["dmitry"][1])
        self.doctor = self.phone(2001, "Dr Айдос", doctor.phone)
        self.admin = self.phone(3001, "Гүлнара", admin.phone)
        self.auditor = self.phone(4001, "Аудитор Сәуле", auditor.phone)
        for phone in (self.aigerim, self.dmitry, self.doctor, self.admin, self.auditor):
            await self.onboard(phone)
        self.heading("family")
        self.heading("whatsapp_link")
        self.baurzhan = "".join(ch for ch in people["baurzhan"][1] if ch.isdigit())  # his wa_id
        self.gulzhan = "+" + "".join(ch for ch in people["gulzhan"][1] if ch.isdigit())  # E.164, as SMS is sent
        self.line("   👤 Бауыржан (WhatsApp): «Сәлеметсіз бе»")
        await self.wa.user_writes(self.baurzhan, "Сәлеметсіз бе", name="Бауыржан")
        await self.whatsapp_settle("Бауыржан")
        choice = self.wa.messages_to(self.baurzhan)[-1]
        self.line(f"   👤 Бауыржан: [{'Қазақша' if self.lang == 'kk' else 'Русский'}]")
        await self.wa.user_taps(self.baurzhan, choice, f"lang:{self.lang}")
        await self.whatsapp_settle("Бауыржан")

        self.heading("visits")
        visits = {}
        for label, patient, hour, mode in (("A", "aigerim", 9, "in_person"), ("B", "dmitry", 10, "online"),
                                           ("C", "dmitry", 11, "in_person"), ("D", "baurzhan", 9.5, "in_person"),
                                           ("E", "gulzhan", 9.75, "in_person")):
            start = dt.datetime.combine(self.day, dt.time(int(hour), int(hour % 1 * 60)), tzinfo=ALMATY)
            status, visit = await self.call("POST", "/visits", self.mis_key,
                                            headers={"Idempotency-Key": f"demo-{label}"},
                                            json={"doctor_id": doctor.id, "patient_id": patient_ids[patient],
                                                  "start": start.isoformat(), "duration_minutes": 20, "mode": mode,
                                                  "service_code": "A01.001"})
            assert status == 201, visit
            visits[label] = visit["id"]
            self.line(f"   МИС → POST /visits: {label} {start:%H:%M} {mode} → #{visit['id']}")

        self.heading_at("morning", self.day, 8, 50)
        await self.move_to(self.day, 8, 50)
        code_message, = await self.aigerim.wait_for(1)
        self.secrets.append(code_in(code_message))

        self.clock.set(dt.datetime.combine(self.day, dt.time(9, 2), tzinfo=ALMATY))
        self.heading("webcam")
        status, decision = await self.post_frame(visits["A"], "obama/obama2.jpg")
        self.line(f"   📷 POST /visits/{visits['A']}/face ({self.say['single_frame']}) → {status} {decision}")
        rng = random.Random(2026)
        held_up = Shot("obama/obama1.jpg")  # the enrolment photo the clinic holds, printed
        for what, frame_for in (
                ("photo_held_up", lambda _pose: camera_frame(
                    held_up, rng, shift=(rng.uniform(-100, 100), rng.uniform(-60, 60)), scale=rng.uniform(0.75, 1.3),
                    rotate_degrees=rng.uniform(-25, 25))),
                ("live_patient", lambda pose: camera_frame(rng.choice(shots("obama", pose)), rng))):
            await self.pause()
            asked, outcome = await self.capture(visits["A"], frame_for)
            reason = f" ({outcome['reason']})" if outcome.get("reason") else ""
            poses = ", ".join(self.say["poses"][pose] for pose in asked)
            self.line(f"   🎥 {self.say[what]}; {self.say['asked']}: {poses} → {outcome['outcome']}{reason}")

        self.heading_at("whatsapp_code", self.day, 9, 20)
        await self.move_to(self.day, 9, 20)
        await self.whatsapp_settle("Бауыржан")
        wa_code = self.wa.messages_to(self.baurzhan)[-1].body["template"]["components"][0]["parameters"][0]["text"]
        self.secrets.append(wa_code)
        self.clock.set(dt.datetime.combine(self.day, dt.time(9, 31), tzinfo=ALMATY))
        self.line(f"   👤 Бауыржан → Dr Айдос: «{wa_code}»")
        status, body = await self.call("POST", f"/visits/{visits['D']}/code", self.webcam_key, json={"code": wa_code})
        self.line(f"   ⌨️  {self.say['clinic_enters']}: POST /visits/{visits['D']}/code → {status} {body}")

        self.heading_at("sms_code", self.day, 9, 35)
        await self.move_to(self.day, 9, 35)
        sms = self.sms_gateway.to(self.gulzhan)[-1]
        sms_code = CODE.search(sms.text).group(1)  # type: ignore[union-attr]
        self.secrets.append(sms_code)
        self.line(f"   📱 SMS {sms.sender} → Гүлжан: {sms.text}")
        self.clock.set(dt.datetime.combine(self.day, dt.time(9, 47), tzinfo=ALMATY))
        self.line(f"   👤 Гүлжан → Dr Айдос: «{sms_code}»")
        status, body = await self.call("POST", f"/visits/{visits['E']}/code", self.webcam_key, json={"code": sms_code})
        self.line(f"   ⌨️  {self.say['clinic_enters']}: POST /visits/{visits['E']}/code → {status} {body}")

        self.heading_at("online", self.day, 9, 58)
        await self.move_to(self.day, 9, 58)
        self.doctor.type("/code")
        menu, = await self.doctor.wait_for(1)
        self.doctor.press(menu, "code:")
        await self.deliver_until(self.dmitry)
        code_message, = await self.dmitry.wait_for(1)
        code = code_in(code_message)
        self.secrets.append(code)
        status, refused = await self.call("POST", f"/visits/{visits['B']}/capture-sessions", self.webcam_key)
        self.line(f"   📷 POST /visits/{visits['B']}/capture-sessions ({self.say['capture_online']}) → {status} "
                  f"{refused.get('detail', '') if isinstance(refused, dict) else refused}")
        self.line(f"   👤 Дмитрий → Dr Айдос: «{code}»")
        status, body = await self.call("POST", f"/visits/{visits['B']}/code", self.webcam_key, json={"code": code})
        self.line(f"   ⌨️  {self.say['clinic_enters']}: POST /visits/{visits['B']}/code → {status} {body}")

        await self.move_to(self.day, 10, 50)
        code_message, = await self.dmitry.wait_for(1)  # visit C's code: Dmitry never comes
        self.secrets.append(code_in(code_message))
        self.line(f"   … {self.say['never_came']}")

        self.heading_at("answers", self.day, 12, 45)
        await self.move_to(self.day, 12, 45)
        prompt_a, = await self.aigerim.wait_for(1)
        prompts_d = await self.dmitry.wait_for(2)
        self.aigerim.press(prompt_a, f"ans:yes:{visits['A']}")
        await self.aigerim.wait_for(1)
        self.dmitry.press(self.with_button(prompts_d, f"ans:yes:{visits['B']}"), f"ans:yes:{visits['B']}")
        await self.dmitry.wait_for(1)
        await self.whatsapp_settle("Бауыржан")  # visit D's question came to WhatsApp at 10:50
        question = self.wa.messages_to(self.baurzhan)[-1]
        self.line("   👤 Бауыржан: [✅]")
        await self.wa.user_taps(self.baurzhan, question, question.button_payloads()[0])
        await self.whatsapp_settle("Бауыржан")
        self.heading("sms_answer")
        question_sms = self.sms_gateway.to(self.gulzhan)[-1]
        self.line(f"   📱 SMS {question_sms.sender} → Гүлжан: {question_sms.text}")
        self.line("   👤 Гүлжан → SMS: «1»")
        status, answer = await self.sms_gateway.reply(self.sms_inbound, self.sms_secret, self.gulzhan, "1",
                                                      timestamp=int(self.clock.now().timestamp()))
        self.line(f"   ↪ POST {self.settings.sms_inbound_path} (X-Rastau-Signature ✓) → {status} {answer}")
        self.dmitry.press(self.with_button(prompts_d, f"ans:no:{visits['C']}"), f"ans:no:{visits['C']}")
        confirm, = await self.dmitry.wait_for(1)  # ❌ records nothing yet: one question to make sure (issue 17)
        self.dmitry.press(confirm, next(d for label, d in buttons(confirm) if label.startswith("❌")))
        await self.dmitry.settle()  # recorded (with who was told and the take-back), and the question about why
        await self.deliver_until(self.admin)  # the admins hear of the dispute at once, and so does the auditor
        await self.admin.wait_for(1)
        await self.deliver_until(self.auditor)
        await self.auditor.wait_for(1)
        self.dmitry.type(self.say["reason"])
        await self.dmitry.settle()
        await self.deliver_until(self.admin)
        await self.admin.wait_for(1)
        await self.deliver_until(self.auditor)
        await self.auditor.wait_for(1)
        self.dmitry.type(self.say["stray"])  # meant as a question, not as a reason: it stays in his chat (issue 17)
        await self.dmitry.settle()
        await self.run_jobs()
        heard = await self.admin.settle() + await self.auditor.settle()
        self.line(self.say["stray_note"].format(n=len(heard)))

        self.heading_at("digest", self.day + dt.timedelta(days=1), 8, 0)
        self.clock.set(dt.datetime.combine(self.day + dt.timedelta(days=1), dt.time(8, 0), tzinfo=ALMATY))
        await daily_digest_job(self.ctx)
        await self.run_jobs()
        await self.admin.settle()

        self.heading("auditor")
        await auditor_summary_job(self.ctx)
        await self.run_jobs()
        await self.auditor.settle()
        await self.webhook.drain()
        kinds = sorted({e["type"] for e in self.payer.events.values()})
        self.line(f"{self.say['payer']}: {len(self.payer.events)} ({', '.join(kinds)}), "
                  f"X-Rastau-Signature ✓, {self.payer.forged} ✗")

        await self.dashboard_links()
        return await self.summary(visits, {v: k for k, v in patient_ids.items()}, people)

    async def channel_of(self, visit_id: int) -> str:
        """The channel that reached the patient about this visit: its last code or question sent (issue 14)."""
        import sqlalchemy as sa

        from core.db import tables as t
        o = t.outbox
        async with self.ctx.uow(read_only=True) as uow:
            used = (await uow.conn.execute(sa.select(o.c.channel).where(
                o.c.visit_id == visit_id, o.c.status == "sent", o.c.recipient_kind == "patient")
                .order_by(o.c.id.desc()).limit(1))).scalar_one_or_none()
        return used or "telegram"

    async def dashboard_links(self) -> None:
        """The web dashboard (issue 13): /web in the admin's and the auditor's chats answers their sign-in links."""
        self.heading("dashboard")
        for phone in (self.admin, self.auditor):
            phone.type("/web")
            answer, = await phone.wait_for(1)
            for url in WEB_LINK.findall(plain(answer.text)):
                self.secrets.append(url.rsplit("/", 1)[1])  # a sign-in token: never in a log
                self.web_links.append((phone.name, url))

    @staticmethod
    def with_button(messages: list[Sent], data: str) -> Sent:
        return next(m for m in messages if any(d == data for _, d in buttons(m)))

    def heading_at(self, key: str, day: dt.date, hour: int, minute: int) -> None:
        self.clock.set(dt.datetime.combine(day, dt.time(hour, minute), tzinfo=ALMATY))
        self.heading(key)

    def phone(self, user_id: int, name: str, number: str) -> Phone:
        return Phone(self.api, user_id, name, number, self.lang, on_message=self.show_message,
                     on_action=self.show_action)

    async def onboard(self, phone: Phone) -> None:
        phone.type("/start")
        greeting, = await phone.wait_for(1)
        phone.press(greeting, f"lang:{self.lang}")
        await phone.wait_for(2)  # the greeting's buttons dropped (an edit), then the privacy notice
        phone.share_contact()
        await phone.wait_for(1)  # "linked": counted, not waited out, so a slow bot cannot push it into the story

    async def summary(self, visits: dict[str, int], names: dict[int, str], people: dict) -> list[Evidence]:
        rows = []
        for label, visit_id in visits.items():
            status, visit = await self.call("GET", f"/visits/{visit_id}", self.admin_key)
            assert status == 200, visit
            visit = visit.get("visit", visit)
            patient = people[names[visit["patient_id"]]][0]
            rows.append(Evidence(label, patient, visit["mode"], visit["state"], visit["verified_by"],
                                 visit["patient_answer"]["answer"], await self.channel_of(visit_id)))
        self.line()
        self.line(f"── {self.say['summary']}")
        word = self.say["values"]
        self.line(render_table(self.say["headers"], [(r.label, r.patient, word[r.mode], word[r.state],
                                                      word[r.verified_by], word[r.answer], r.channel) for r in rows]))
        return rows


def code_in(message: Sent) -> str:
    """The one-time code a message carries; a story out of step says which message it got instead."""
    found = CODE.search(plain(message.text))
    if found is None:
        raise AssertionError(f"expected a message with a one-time code, got: {plain(message.text)[:120]!r}")
    return found.group(1)


def render_table(headers, rows) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    def fmt(row):
        return "│ " + " │ ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " │"
    rule = "├─" + "─┼─".join("─" * w for w in widths) + "─┤"
    return "\n".join([fmt(headers), rule, *(fmt(r) for r in rows)])


@dataclass(frozen=True)
class DemoRun:
    evidence: list[Evidence]
    secrets: list[str]  # IINs, codes, keys and tokens the story used: none may appear in its logs


async def play(lang: str = "ru", *, quick: bool = False, out=None, log_stream=None,
               log_level: str = "WARNING", serve: bool = False, face_pool: FaceAnalyser | None = None) -> DemoRun:
    """The story in ``lang``; ``face_pool``: face workers already warm, which the story uses and leaves running
    (the tests share one between the languages: a worker loading dlib costs seconds)."""
    configure_logging(log_level, "console", log_stream)
    async with Story(lang, out or sys.stdout, pace=0.0 if quick else 0.4, face_pool=face_pool) as story:
        evidence = await story.play()
        story.line()
        for name, url in story.web_links:
            story.line(story.say["dashboard_link"].format(name=name, url=url))
        if serve:  # keep the server (and the bot) up for a person with a browser, until Enter
            story.line(story.say["serve"])
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return DemoRun(evidence, list(story.secrets))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devkit.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lang", choices=sorted(NARRATION), default="ru", help="language of the chats and story")
    parser.add_argument("--quick", action="store_true", help="no pauses (the test suite runs it this way)")
    parser.add_argument("--log-file", type=Path, help="write the server's and bot's INFO logs here")
    parser.add_argument("--serve", action="store_true", default=os.environ.get("DEMO_SERVE") == "1",
                        help="keep the server up for the dashboard's links until Enter (or DEMO_SERVE=1)")
    args = parser.parse_args(argv)
    if args.log_file:
        with args.log_file.open("w", encoding="utf-8") as logs:
            asyncio.run(play(args.lang, quick=args.quick, log_stream=logs, log_level="INFO", serve=args.serve))
    else:
        asyncio.run(play(args.lang, quick=args.quick, serve=args.serve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
